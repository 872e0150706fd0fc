# jobpipe_handler.py - zero-dependency helper (Python 3.8+ stdlib only) for
# writing jobpipe handlers in persistent mode. It speaks the line protocol
# described in docs/handler-protocol.md so a handler only has to provide a
# function. Copy this file next to your handler or put it on sys.path.
#
#     from jobpipe_handler import serve, progress
#
#     def handler(job):
#         progress(job, "working")
#         return {"echo": job["input"]}
#
#     serve(handler, init=load_model)
"""Helper for jobpipe persistent-mode handlers.

Public API:

    serve(handler, init=None)
        Protect the protocol channel, run init() (e.g. model loading), announce
        readiness with {"ready": true}, then answer jobs from stdin until EOF,
        and exit with status 0.

    progress(job, value)
        Send {"id": job["id"], "progress": value}. `job` may also be the id.

    heartbeat(job)
        Send {"id": job["id"], "heartbeat": true}: the job is still being
        worked on, with nothing to report. Under jobpipe's --stall-timeout a
        job that sends nothing for that long counts as hung; call this from
        the code that makes progress (a loop over tokens or steps), not from
        a timer thread, or a hung engine would look alive.

What handler(job) may return:
    * any JSON-serialisable value     -> {"id": ..., "output": value}
    * a dict with a non-null "error"  -> {"id": ..., "error": text}, where text
                                         is the value itself if it is a string,
                                         else its JSON text (plus "output" if
                                         the dict has one)
    * a dict with "refresh_worker": true -> the key is removed from the output
                                         and "refresh_worker": true is put on
                                         the final line
    * a generator (or a generator function as handler) -> every yielded value
      becomes {"id": ..., "stream": value}, followed by {"id": ..., "output": []}
    * raising an exception -> traceback on stderr and
      {"id": ..., "error": REPORT}, where REPORT is the JSON text of the
      runpod SDK's error report: {"error_type": "<class 'ValueError'>",
      "error_message": ..., "error_traceback": ..., "hostname": ...,
      "worker_id": ...}, so clients that parse the SDK's report keep working

If handler is an `async def` function (or an async generator function), jobs
run concurrently in one asyncio event loop (for --jobs-per-handler > 1) and a
{"id": ..., "cancel": true} line cancels that job's task, which then answers
{"id": ..., "error": "cancelled"}. A plain function handles one job at a time
and cancel lines are ignored (jobpipe restarts the process instead).
"""

import asyncio
import inspect
import json
import os
import socket
import sys
import threading
import traceback

__all__ = ["serve", "progress", "heartbeat"]

_write_lock = threading.Lock()
_proto_fd = None  # private duplicate of the original stdout, set by serve()


# --------------------------------------------------------------------------
# protocol output
# --------------------------------------------------------------------------

def _log(message):
    """Write a diagnostic line to stderr (jobpipe logs it)."""
    try:
        sys.stderr.write("jobpipe_handler: %s\n" % message)
        sys.stderr.flush()
    except Exception:
        pass


def _dumps(obj):
    # jobpipe accepts only what strict JSON allows: no NaN or Infinity
    # (allow_nan=False raises ValueError) and no lone surrogates. Text is
    # written as UTF-8 rather than as \u escapes, so a lone surrogate (from
    # surrogateescape-decoded bytes, say) fails to encode here, with
    # UnicodeEncodeError (a ValueError), instead of reaching jobpipe as an
    # escape it rejects.
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")
    return text


def _write_raw(data):
    if _proto_fd is None:
        raise RuntimeError("jobpipe_handler: serve() has not been called")
    view = memoryview(data)
    with _write_lock:
        try:
            while view:
                written = os.write(_proto_fd, view)
                view = view[written:]
        except BrokenPipeError:
            # jobpipe is gone; nobody is left to answer to.
            _log("stdout closed by jobpipe, exiting")
            os._exit(1)


def _send(obj):
    """Serialise one protocol object and write it as a single line.

    If the object cannot be serialised (non-JSON value, NaN, ...), an error
    line for the same id is written instead so the job still gets an answer.
    """
    try:
        line = _dumps(obj)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        if "id" not in obj or "ready" in obj:
            raise
        msg = "%s: %s" % (type(exc).__name__, exc)
        if isinstance(exc, UnicodeEncodeError):
            msg += " (text with a lone surrogate is not Unicode)"
        _log("cannot serialise answer for job %r: %s" % (obj.get("id"), msg))
        kind = "progress" if "progress" in obj else "stream" if "stream" in obj else None
        if kind is not None:
            # A bad partial result is dropped; the job itself goes on.
            return
        fallback = {"id": obj["id"], "error": "result is not JSON-serialisable: " + msg}
        if obj.get("refresh_worker") is True:
            fallback["refresh_worker"] = True
        line = _dumps(fallback)
    _write_raw((line + "\n").encode("utf-8"))


def progress(job, value):
    """Report progress for a running job: {"id": ..., "progress": value}.

    `job` is the job dict given to the handler (or just its id). Safe to call
    from any thread.
    """
    job_id = job.get("id") if isinstance(job, dict) else job
    _send({"id": job_id, "progress": value})


def heartbeat(job):
    """Say the job is alive without progress: {"id": ..., "heartbeat": true}.

    Resets the job's --stall-timeout. Safe to call from any thread.
    """
    job_id = job.get("id") if isinstance(job, dict) else job
    _send({"id": job_id, "heartbeat": True})


def _final_line(job_id, result):
    """Build the final protocol line for a handler's return value."""
    line = {"id": job_id}
    refresh = False
    if isinstance(result, dict):
        if isinstance(result.get("refresh_worker"), bool):
            refresh = result["refresh_worker"]
            result = dict(result)
            del result["refresh_worker"]
        if result.get("error") is not None:
            line["error"] = _error_string(result["error"])
            if "output" in result:
                line["output"] = result["output"]
        else:
            line["output"] = result
    else:
        line["output"] = result
    if refresh:
        line["refresh_worker"] = True
    return line


def _error_string(value):
    """A returned "error" value as text: strings as they are, other JSON
    values as their JSON text (as jobpipe itself does), anything else str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseException):
        return _error_text(value)
    try:
        return _dumps(value)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return str(value)


def _error_text(exc):
    message = str(exc)
    name = type(exc).__name__
    return "%s: %s" % (name, message) if message else name


def _error_report(exc):
    """The runpod SDK's error report for an exception, as JSON text."""
    return _dumps({
        "error_type": str(type(exc)),
        "error_message": str(exc),
        "error_traceback": "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        ),
        "hostname": os.environ.get("RUNPOD_POD_HOSTNAME") or socket.gethostname(),
        "worker_id": os.environ.get("JOBPIPE_WORKER_ID")
        or os.environ.get("RUNPOD_POD_ID", "unknown"),
    })


def _report_exception(job_id, exc):
    _log("job %r raised:" % (job_id,))
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    _send({"id": job_id, "error": _error_report(exc)})


# --------------------------------------------------------------------------
# input parsing
# --------------------------------------------------------------------------

def _parse_line(raw):
    """Return a dict for a usable input line, or None (already reported)."""
    text = raw.strip()
    if not text:
        return None
    try:
        obj = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        _log("ignoring input line that is not valid JSON (%s): %r" % (exc, text[:200]))
        return None
    if not isinstance(obj, dict):
        _log("ignoring input line that is not a JSON object: %r" % (text[:200],))
        return None
    if "id" not in obj:
        _log("ignoring input object without an \"id\": %r" % (text[:200],))
        return None
    if obj.get("cancel") is True:
        return obj
    if "input" not in obj:
        _log("job %r has no \"input\" key" % (obj["id"],))
        _send({"id": obj["id"], "error": "malformed job: missing \"input\""})
        return None
    return obj


# --------------------------------------------------------------------------
# synchronous handlers: one job at a time
# --------------------------------------------------------------------------

def _run_sync_job(handler, job):
    job_id = job["id"]
    try:
        result = handler(job)
        if inspect.iscoroutine(result):
            # A plain function that returned a coroutine: run it to the end.
            result = asyncio.run(result)
        if inspect.isgenerator(result):
            for part in result:
                _send({"id": job_id, "stream": part})
            result = []
        elif inspect.isasyncgen(result):
            result = asyncio.run(_drain_async_gen(job_id, result))
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error line
        _report_exception(job_id, exc)
        return
    _send(_final_line(job_id, result))


def _serve_sync(handler):
    stdin = sys.stdin.buffer
    while True:
        raw = stdin.readline()
        if not raw:
            return
        obj = _parse_line(raw)
        if obj is None:
            continue
        if obj.get("cancel") is True:
            _log("ignoring cancel for job %r: handler is synchronous" % (obj["id"],))
            continue
        _run_sync_job(handler, obj)


# --------------------------------------------------------------------------
# asynchronous handlers: concurrent jobs in one event loop
# --------------------------------------------------------------------------

async def _drain_async_gen(job_id, agen):
    async for part in agen:
        _send({"id": job_id, "stream": part})
    return []


async def _run_async_job(handler, job):
    # Cancellation is answered by the task's done callback (see _serve_async):
    # a task can be cancelled before this coroutine even starts running.
    job_id = job["id"]
    try:
        result = handler(job)
        if inspect.isawaitable(result):
            result = await result
        if inspect.isasyncgen(result):
            result = await _drain_async_gen(job_id, result)
        elif inspect.isgenerator(result):
            for part in result:
                _send({"id": job_id, "stream": part})
            result = []
    except Exception as exc:  # noqa: BLE001
        _report_exception(job_id, exc)
        return
    _send(_final_line(job_id, result))


def _stdin_reader(loop, queue):
    """Thread: feed raw stdin lines into the event loop; None means EOF.

    Reads fd 0 directly (not sys.stdin) so that no lock of a Python file
    object is held by this thread when the interpreter exits.
    """
    pending = b""
    try:
        while True:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                loop.call_soon_threadsafe(queue.put_nowait, raw)
        if pending:
            loop.call_soon_threadsafe(queue.put_nowait, pending)
    except Exception as exc:  # noqa: BLE001
        _log("error reading stdin: %s" % (exc,))
    finally:
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def _serve_async(handler):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    tasks = {}  # job id -> task

    reader = threading.Thread(target=_stdin_reader, args=(loop, queue), daemon=True)
    reader.start()

    while True:
        raw = await queue.get()
        if raw is None:
            break
        obj = _parse_line(raw)
        if obj is None:
            continue
        job_id = obj["id"]
        try:
            hash(job_id)
        except TypeError:
            _log("ignoring object with an unhashable id: %r" % (job_id,))
            continue
        if obj.get("cancel") is True:
            task = tasks.get(job_id)
            if task is None:
                _log("cancel for job %r which is not running" % (job_id,))
            else:
                task.cancel()
            continue
        if job_id in tasks:
            _log("ignoring job %r: a job with this id is already running" % (job_id,))
            continue
        task = loop.create_task(_run_async_job(handler, obj))
        tasks[job_id] = task
        task.add_done_callback(lambda t, _id=job_id: _job_done(tasks, _id, t))

    # EOF: let the jobs already started finish, then exit.
    if tasks:
        await asyncio.gather(*list(tasks.values()), return_exceptions=True)


def _job_done(tasks, job_id, task):
    tasks.pop(job_id, None)
    if task.cancelled():
        _send({"id": job_id, "error": "cancelled"})


def _is_async(handler):
    if inspect.iscoroutinefunction(handler) or inspect.isasyncgenfunction(handler):
        return True
    call = getattr(handler, "__call__", None)
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------

def _protect_stdout():
    """Keep fd 1 for protocol lines only.

    The real stdout is moved to a private descriptor and fd 1 is pointed at
    stderr, so print(), a C library writing to fd 1, or a child process cannot
    corrupt a protocol line (for instance by gluing text without a newline in
    front of it). Anything already buffered in sys.stdout ends up on stderr.
    """
    global _proto_fd
    if _proto_fd is not None:
        return
    _proto_fd = os.dup(1)  # not inherited by child processes
    os.dup2(2, 1)
    try:
        sys.stdout.flush()  # pending print() output now goes to stderr
    except Exception:  # noqa: BLE001
        pass
    sys.stdout = sys.stderr


def serve(handler, init=None):
    """Run a persistent jobpipe handler; never returns (exits 0 on EOF)."""
    _protect_stdout()
    try:
        if init is not None:
            init()
        _send({"ready": True})
        if _is_async(handler):
            asyncio.run(_serve_async(handler))
        else:
            _serve_sync(handler)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001 - e.g. init() failed: report and exit non-zero
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        sys.exit(1)
    sys.stderr.flush()
    sys.exit(0)


if __name__ == "__main__":
    sys.stderr.write("jobpipe_handler.py is a library; see handlers/python/echo.py\n")
    sys.exit(2)

# Protect the protocol channel as soon as the helper is imported, so that
# output of imports that follow (a library printing a banner while it loads)
# cannot reach it either. Import this helper before anything noisy.
_protect_stdout()
