#!/usr/bin/env python3
# jobpipe_runpod.py - runs a handler file written for the RunPod Python SDK,
# unchanged, under jobpipe:
#
#     jobpipe -- python3 jobpipe_runpod.py handler.py
#     jobpipe -- python3 -m jobpipe_runpod handler.py     (where it is on sys.path)
#
# One file, Python 3.8+ standard library only: copy it into an image. The
# handler file's call to runpod.serverless.start({"handler": f, ...}) enters
# this adapter's job loop, which speaks jobpipe's line protocol
# (docs/handler-protocol.md) instead of RunPod's HTTP protocol; jobpipe takes
# the jobs and delivers the results. See docs/migrating-from-runpod.md.
"""Run an unmodified RunPod SDK handler file as a jobpipe handler.

What the SDK's worker does with a handler, this adapter does too:

* The handler is classified from the function, as the SDK does: a generator
  function or an async generator function streams its partials (with
  ``return_aggregate_stream`` the final output is the list of partials, else
  ``[]``); any other callable is called and its result awaited if it is
  awaitable.
* A returned dict loses its top-level ``error`` and ``refresh_worker`` keys: a
  truthy ``error`` fails the job (the rest of the dict, if any, is its
  output), a truthy ``refresh_worker`` asks for a fresh process (RunPod's
  ``stopPod``). The ``refresh_worker`` start option does that after every job.
* An exception fails the job with the SDK's error report, JSON text with
  ``error_type``, ``error_message``, ``error_traceback``, ``hostname``,
  ``worker_id`` and ``runpod_version``.
* ``runpod.serverless.progress_update(job, value)`` sends a progress update,
  in order with the job's other updates and always before its result.
* ``concurrency_modifier`` limits how many jobs of an async handler run at
  once; jobpipe's ``--jobs-per-handler`` is the ceiling (it sends no more).

And where the SDK is weak, it does better: a result that is not JSON (for
instance a plain function returning a generator object) fails the job with a
message saying so; nothing the handler, the SDK or a C library prints can
reach the protocol channel; the SDK's command-line flags are taken out of
``sys.argv`` before the handler file runs (jobpipe has its own).

When the ``runpod`` package is installed it is used, so its utilities
(``rp_validator``, ``rp_upload``, ``rp_download``, ``RunPodLogger``) keep
working; only ``runpod.serverless.start`` and ``progress_update`` are
replaced. Without it, a small stand-in module makes ``import runpod`` work for
``runpod.serverless.start``, ``runpod.serverless.progress_update`` and
``runpod.RunPodLogger``.
"""

import asyncio
import collections
import inspect
import json
import os
import runpy
import socket
import sys
import threading
import traceback
import types

USAGE = "usage: python3 jobpipe_runpod.py HANDLER_FILE [ARGS...]"

# The SDK's own command-line flags: name -> (takes a value, what to do instead).
SDK_FLAGS = {
    "--test_input": (True, "give it to jobpipe: jobpipe --test-input JSON -- ..."),
    "--test_output": (True, "give it to jobpipe: jobpipe --test-output JSON -- ..."),
    "--rp_log_level": (True, "jobpipe's level is --log-level or RUNPOD_LOG_LEVEL"),
    "--rp_debugger": (False, "the SDK's debugger timings are not available under jobpipe"),
    "--rp_serve_api": (False, "give it to jobpipe: jobpipe --serve-api serves the endpoint API"),
    "--rp_api_port": (True, "give it to jobpipe, with --serve-api"),
    "--rp_api_host": (True, "give it to jobpipe, with --serve-api"),
    "--rp_api_concurrency": (True, "jobpipe's --concurrency sets how many jobs run at once"),
}

_write_lock = threading.Lock()
_proto_fd = None  # private duplicate of the original stdout
_jobs_in = None  # private duplicate of the original stdin
_open_jobs = set()  # ids whose final line has not been written; under _write_lock
_started = False  # runpod.serverless.start() has been called
_runpod_version = None  # the installed SDK's version, None with the stand-in


# --------------------------------------------------------------------------
# the protocol channel
# --------------------------------------------------------------------------

def _log(message):
    sys.stderr.write("jobpipe_runpod: %s\n" % (message,))
    sys.stderr.flush()


def _protect_channels():
    """Keep fd 1 for protocol lines and fd 0 for job lines only.

    The real stdout moves to a private descriptor and fd 1 points at stderr,
    so print(), the SDK's logger, C libraries and child processes write to
    stderr. The real stdin moves to a private descriptor too and fd 0 reads
    /dev/null, so nothing the handler starts can swallow a job line.
    """
    global _proto_fd, _jobs_in
    if _proto_fd is not None:
        return
    _proto_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    sys.stdout = sys.stderr
    _jobs_in = os.fdopen(os.dup(0), "rb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _write_line(line):
    """Writes one whole line; the caller holds _write_lock."""
    view = memoryview((line + "\n").encode("utf-8"))
    try:
        while view:
            view = view[os.write(_proto_fd, view):]
    except BrokenPipeError:
        _log("jobpipe closed the protocol channel; exiting")
        os._exit(1)


def _send_ready():
    with _write_lock:
        _write_line(_dumps({"ready": True}))


def _send_update(job_id, kind, value):
    """Sends a stream or progress line for a job still open. Returns an error
    message when the value is not JSON, else None."""
    try:
        line = _dumps({"id": job_id, kind: value})
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        return "%s: %s" % (type(exc).__name__, exc)
    with _write_lock:
        if job_id in _open_jobs:
            _write_line(line)
        elif kind == "progress":
            _log("progress for job %r after its result is dropped" % (job_id,))
    return None


def _send_final(answer):
    """Writes a job's final line once; later answers for it are dropped."""
    with _write_lock:
        if answer["id"] not in _open_jobs:
            return
        _open_jobs.discard(answer["id"])
        _write_line(_dumps(answer))


# --------------------------------------------------------------------------
# results in the SDK's shapes
# --------------------------------------------------------------------------

def _error_report(exc):
    """The SDK's error report for an exception, as JSON text."""
    report = {
        "error_type": str(type(exc)),
        "error_message": str(exc),
        "error_traceback": "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        ),
        "hostname": os.environ.get("RUNPOD_POD_HOSTNAME") or socket.gethostname(),
        "worker_id": os.environ.get("JOBPIPE_WORKER_ID")
        or os.environ.get("RUNPOD_POD_ID", "unknown"),
    }
    if _runpod_version is not None:
        report["runpod_version"] = _runpod_version
    return _dumps(report)


def _exception_answer(job_id, exc):
    _log("job %r raised:" % (job_id,))
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    return {"id": job_id, "error": _error_report(exc)}


def _not_json(job_id, what, value, exc):
    if inspect.isgenerator(value) or inspect.isasyncgen(value):
        message = (
            "%s is a generator object, which is not JSON: a handler streams only "
            "when it is itself a generator function (def handler(job): ... yield ...), "
            "as with the runpod SDK; return a JSON value instead" % (what,)
        )
    else:
        message = "%s is not JSON (%s: %s)" % (what, type(exc).__name__, exc)
    _log("job %r failed: %s" % (job_id, message))
    return {"id": job_id, "error": message}


def _result_answer(job_id, result):
    """The final line for a handler's return value, as the SDK reads it."""
    answer = {"id": job_id}
    if isinstance(result, dict):
        result = dict(result)
        error = result.pop("error", None)
        if result.pop("refresh_worker", None):
            answer["refresh_worker"] = True
        if error:
            answer["error"] = error
            if result:
                answer["output"] = result
        else:
            # The SDK sends no output at all for a dict left empty.
            answer["output"] = result if result else None
    else:
        answer["output"] = result
    try:
        _dumps(answer)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        return _not_json(job_id, "the handler's result", result, exc)
    return answer


class _Stream:
    """One streaming job's partials: sent as they come, kept for the
    aggregate output when asked, checked for the SDK's error partial."""

    def __init__(self, job_id, aggregate):
        self.job_id = job_id
        self.parts = [] if aggregate else None
        self.count = 0

    def add(self, part):
        """Sends one partial; returns the job's final answer when the partial
        ends it, else None."""
        if isinstance(part, dict) and part.get("error"):
            return {"id": self.job_id, "error": str(part["error"])}
        problem = _send_update(self.job_id, "stream", part)
        if problem is not None:
            what = "partial result %d" % (self.count,)
            return _not_json(self.job_id, what, part, ValueError(problem))
        self.count += 1
        if self.parts is not None:
            self.parts.append(part)
        return None

    def done(self):
        return {"id": self.job_id, "output": self.parts if self.parts is not None else []}


def _finish(answer, config):
    if config.refresh_worker:
        answer["refresh_worker"] = True
    _send_final(answer)


# --------------------------------------------------------------------------
# running jobs
# --------------------------------------------------------------------------

class _Config:
    """What runpod.serverless.start() was given."""

    def __init__(self, config):
        if not isinstance(config, dict) or not callable(config.get("handler")):
            raise TypeError(
                'runpod.serverless.start() needs a dict with a callable "handler", '
                "e.g. runpod.serverless.start({\"handler\": handler})"
            )
        handler = config["handler"]
        self.handler = handler
        self.streams = inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler)
        self.is_async = inspect.iscoroutinefunction(handler) or inspect.isasyncgenfunction(handler)
        self.aggregate = bool(config.get("return_aggregate_stream", False))
        self.refresh_worker = bool(config.get("refresh_worker", False))
        self.modifier = config.get("concurrency_modifier")
        if self.modifier is not None and not callable(self.modifier):
            raise TypeError("concurrency_modifier must be a function taking and returning an int")

    def concurrency(self, current):
        """The modifier's answer for the current limit, at least 1."""
        if self.modifier is None:
            return current
        try:
            wanted = int(self.modifier(current))
        except Exception as exc:  # noqa: BLE001
            _log("concurrency_modifier raised %s: %s; keeping %d" % (type(exc).__name__, exc, current))
            return current
        return max(1, wanted)


async def _await(awaitable):
    return await awaitable


def _run_sync_job(config, job):
    job_id = job["id"]
    try:
        if config.streams:
            stream = _Stream(job_id, config.aggregate)
            parts = config.handler(job)
            try:
                answer = None
                for part in parts:
                    answer = stream.add(part)
                    if answer is not None:
                        break
            finally:
                parts.close()
            answer = answer or stream.done()
        else:
            result = config.handler(job)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            answer = _result_answer(job_id, result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error
        answer = _exception_answer(job_id, exc)
    _finish(answer, config)


async def _run_async_job(config, job):
    job_id = job["id"]
    try:
        if config.streams:
            stream = _Stream(job_id, config.aggregate)
            parts = config.handler(job)
            try:
                answer = None
                async for part in parts:
                    answer = stream.add(part)
                    if answer is not None:
                        break
            finally:
                await parts.aclose()
            answer = answer or stream.done()
        else:
            result = config.handler(job)
            if inspect.isawaitable(result):
                result = await result
            answer = _result_answer(job_id, result)
    except Exception as exc:  # noqa: BLE001
        answer = _exception_answer(job_id, exc)
    _finish(answer, config)


def _parse_job(raw):
    """A job or cancel object from one stdin line, or None (reported)."""
    text = raw.strip()
    if not text:
        return None
    try:
        obj = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        _log("ignoring an input line that is not JSON (%s): %r" % (exc, text[:200]))
        return None
    if not isinstance(obj, dict) or "id" not in obj:
        _log("ignoring an input line that is not a job object: %r" % (text[:200],))
        return None
    try:
        hash(obj["id"])
    except TypeError:
        _log("ignoring an input line with an unusable id: %r" % (text[:200],))
        return None
    if obj.get("cancel") is True:
        return obj
    if "input" not in obj:
        _open_job(obj["id"])
        _send_final({"id": obj["id"], "error": 'malformed job: missing "input"'})
        return None
    return obj


def _open_job(job_id):
    with _write_lock:
        _open_jobs.add(job_id)


def _serve_sync(config):
    """A plain or generator function: one job at a time, as the SDK runs it
    (its event loop is blocked while a synchronous handler works)."""
    if config.concurrency(1) > 1:
        _log(
            "concurrency_modifier asks for several jobs at once, but the handler "
            "is not async: jobs run one at a time"
        )
    for raw in _jobs_in:
        job = _parse_job(raw)
        if job is None:
            continue
        if job.get("cancel") is True:
            _log("cancel for job %r ignored: the handler is not async" % (job["id"],))
            continue
        _open_job(job["id"])
        _run_sync_job(config, job)


def _read_jobs(loop, queue):
    """Thread: stdin lines into the event loop; None means EOF."""
    try:
        for raw in _jobs_in:
            loop.call_soon_threadsafe(queue.put_nowait, raw)
    except Exception as exc:  # noqa: BLE001
        _log("reading jobs failed: %s" % (exc,))
    finally:
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def _serve_async(config):
    """An async function or async generator: jobs run concurrently, up to
    what concurrency_modifier allows; the rest wait their turn here."""
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()
    threading.Thread(target=_read_jobs, args=(loop, lines), daemon=True).start()
    running = {}  # job id -> task
    waiting = collections.OrderedDict()  # job id -> job, over the limit
    limit = config.concurrency(1)
    all_done = asyncio.Event()

    def start_waiting():
        nonlocal limit
        if waiting:
            limit = config.concurrency(limit)
        while waiting and len(running) < limit:
            job_id, job = waiting.popitem(last=False)
            task = loop.create_task(_run_async_job(config, job))
            running[job_id] = task
            task.add_done_callback(lambda t, i=job_id: job_ended(i, t))

    def job_ended(job_id, task):
        running.pop(job_id, None)
        if task.cancelled():
            _send_final({"id": job_id, "error": "cancelled"})
        start_waiting()
        if not running and not waiting:
            all_done.set()

    while True:
        raw = await lines.get()
        if raw is None:
            break
        job = _parse_job(raw)
        if job is None:
            continue
        job_id = job["id"]
        if job.get("cancel") is True:
            if job_id in running:
                running[job_id].cancel()
            elif job_id in waiting:
                del waiting[job_id]
                _send_final({"id": job_id, "error": "cancelled"})
            continue
        if job_id in running or job_id in waiting:
            _log("ignoring job %r: a job with this id is already here" % (job_id,))
            continue
        _open_job(job_id)
        waiting[job_id] = job
        all_done.clear()
        start_waiting()
    # EOF: finish what was handed over, then return.
    if running or waiting:
        await all_done.wait()


def start(config):
    """runpod.serverless.start(config) under jobpipe: announce readiness and
    answer jobs from jobpipe until it closes stdin, then return."""
    global _started
    if _started:
        raise RuntimeError("runpod.serverless.start() was called twice")
    _started = True
    config = _Config(config)
    _send_ready()
    if config.is_async:
        asyncio.run(_serve_async(config))
    else:
        _serve_sync(config)


def progress_update(job, progress):
    """runpod.serverless.progress_update(job, progress) under jobpipe."""
    job_id = job["id"] if isinstance(job, dict) else job
    problem = _send_update(job_id, "progress", progress)
    if problem is not None:
        _log("progress for job %r is not JSON and is dropped: %s" % (job_id, problem))


# --------------------------------------------------------------------------
# the runpod module: the real one with start redirected, or a stand-in
# --------------------------------------------------------------------------

class RunPodLogger:
    """The stand-in's logger: the SDK's levels and line format, on stderr."""

    LEVELS = ["NOTSET", "TRACE", "DEBUG", "INFO", "WARN", "ERROR"]

    def __init__(self):
        level = os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL") or "DEBUG"
        self.level = level.upper() if level.upper() in self.LEVELS else "DEBUG"

    def set_level(self, level):
        self.level = str(level).upper()

    def log(self, message, message_level="INFO", job_id=None):
        if self.level == "NOTSET" or self.level not in self.LEVELS:
            return
        if message_level in self.LEVELS and self.LEVELS.index(message_level) < self.LEVELS.index(self.level):
            return
        text = "%s | %s" % (job_id, message) if job_id else str(message)
        sys.stderr.write("%s| %s\n" % (message_level.ljust(7), text))
        sys.stderr.flush()

    def debug(self, message, request_id=None):
        self.log(message, "DEBUG", request_id)

    def info(self, message, request_id=None):
        self.log(message, "INFO", request_id)

    def warn(self, message, request_id=None):
        self.log(message, "WARN", request_id)

    def error(self, message, request_id=None):
        self.log(message, "ERROR", request_id)

    def trace(self, message, request_id=None):
        self.log(message, "TRACE", request_id)

    def tip(self, message):
        self.log(message, "TIP")


def _install_standin():
    package = types.ModuleType("runpod")
    package.__path__ = []
    package.__version__ = "0+jobpipe_runpod"
    package.RunPodLogger = RunPodLogger
    serverless = types.ModuleType("runpod.serverless")
    serverless.__path__ = []
    serverless.start = start
    serverless.progress_update = progress_update
    modules = types.ModuleType("runpod.serverless.modules")
    modules.__path__ = []
    rp_logger = types.ModuleType("runpod.serverless.modules.rp_logger")
    rp_logger.RunPodLogger = RunPodLogger
    rp_progress = types.ModuleType("runpod.serverless.modules.rp_progress")
    rp_progress.progress_update = progress_update
    package.serverless = serverless
    serverless.modules = modules
    modules.rp_logger = rp_logger
    modules.rp_progress = rp_progress
    for module in (package, serverless, modules, rp_logger, rp_progress):
        sys.modules[module.__name__] = module


def _install_runpod():
    """Imports the real runpod package and points it at this adapter, or
    installs the stand-in when the package is not installed."""
    global _runpod_version
    try:
        import runpod
        import runpod.serverless
        import runpod.serverless.modules.rp_progress as rp_progress
    except ModuleNotFoundError as exc:
        if exc.name != "runpod":
            raise
        _log("the runpod package is not installed; using a stand-in for runpod.serverless")
        _install_standin()
        return
    _runpod_version = getattr(runpod, "__version__", "unknown")
    runpod.serverless.start = start
    runpod.serverless.progress_update = progress_update
    rp_progress.progress_update = progress_update


def _strip_sdk_flags(args):
    """The handler's arguments without the SDK's own flags."""
    kept = []
    i = 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        spec = SDK_FLAGS.get(name)
        if spec is None:
            kept.append(args[i])
            i += 1
            continue
        takes_value, instead = spec
        i += 2 if takes_value and not eq and i + 1 < len(args) else 1
        _log("removed the runpod SDK flag %s from the handler's arguments: %s" % (name, instead))
    return kept


def main(argv):
    if not argv or argv[0].startswith("-"):
        _log(USAGE)
        return 2
    path = argv[0]
    if not os.path.isfile(path):
        _log("handler file %r not found (%s)" % (path, USAGE))
        return 2
    _protect_channels()
    _install_runpod()
    sys.argv = [path] + _strip_sdk_flags(argv[1:])
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    runpy.run_path(path, run_name="__main__")
    if not _started:
        _log("%s ended without calling runpod.serverless.start({\"handler\": ...})" % (path,))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
