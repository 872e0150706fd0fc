#!/usr/bin/env python3
"""fake_queue.py - a stand-in for the worker side of RunPod's job queue, for
the container smoke test (the Rust tests have their own in
tests/support/fake_runpod.rs; a container cannot reach a test's in-process
server, so this one runs as its own process on the host's loopback).

    fake_queue.py --port-file F --log F [--job JSON]...

Serves plain HTTP on 127.0.0.1 on a free port, written to --port-file once
it listens. Routes, under /v2/<endpoint>/:

  job-take/<worker>        the next --job (200), or 204 after a 1 s long poll
  job-take-batch/<worker>  up to batch_size jobs (200, a JSON array), or 204
  job-done/<worker>/<job>  200 {}
  job-stream/<worker>/<job> 200 {}
  ping/<worker>            200 {}
  job-stop/<worker>        204 after a 1 s long poll

Every request is appended to --log as one JSON line, after it was answered:
{"method", "route", "path", "query", "body", "jobs"} where "route" is the
route name above (or null) and "jobs" the ids of the jobs handed out.
Standard library only.
"""

import argparse
import json
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

LONG_POLL_S = 1.0
MAX_BODY = 64 * 1024 * 1024


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--job", action="append", default=[], help="a job object (JSON)")
    return p.parse_args()


def route_of(path):
    """The route name of a /v2/<endpoint>/<route>/... path, or None."""
    parts = path.split("/")
    if len(parts) >= 5 and parts[0] == "" and parts[1] == "v2":
        return parts[3]
    return None


class Queue:
    """The jobs not yet handed out."""

    def __init__(self, jobs):
        self.jobs = queue.Queue()
        for job in jobs:
            self.jobs.put(job)

    def take(self, count, wait_s):
        """Up to count jobs; waits up to wait_s for the first one."""
        taken = []
        try:
            taken.append(self.jobs.get(timeout=wait_s))
            while len(taken) < count:
                taken.append(self.jobs.get_nowait())
        except queue.Empty:
            pass
        return taken


class Log:
    """The request log: one JSON line per request, flushed at once."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def write(self, entry):
        with self.lock:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()


def make_handler(jobs, log):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def do_GET(self):
            self.serve()

        def do_POST(self):
            self.serve()

        def serve(self):
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query))
            body = self.read_body()
            route = route_of(url.path)
            handed_out = []
            if route == "job-take":
                handed_out = jobs.take(1, LONG_POLL_S)
                if handed_out:
                    self.answer(200, handed_out[0])
                else:
                    self.answer(204)
            elif route == "job-take-batch":
                count = max(1, int(query.get("batch_size", "1")))
                handed_out = jobs.take(count, LONG_POLL_S)
                if handed_out:
                    self.answer(200, handed_out)
                else:
                    self.answer(204)
            elif route in ("job-done", "job-stream", "ping"):
                self.answer(200, {})
            elif route == "job-stop":
                threading.Event().wait(LONG_POLL_S)
                self.answer(204)
            else:
                self.answer(404, {"error": "no such route"})
            log.write({
                "method": self.command,
                "route": route,
                "path": url.path,
                "query": query,
                "body": body,
                "jobs": [job.get("id") for job in handed_out],
            })

        def read_body(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("request body too large")
            return self.rfile.read(length).decode("utf-8", "replace")

        def answer(self, status, value=None):
            data = b"" if value is None else json.dumps(value).encode()
            try:
                self.send_response(status)
                if value is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # A worker that shuts down ends its long polls at once.
                self.close_connection = True

    return Handler


def main():
    args = parse_args()
    jobs = Queue([json.loads(job) for job in args.job])
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(jobs, Log(args.log)))
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
