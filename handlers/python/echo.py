# echo.py - example jobpipe handler (persistent mode) built on jobpipe_handler.py.
# It returns each job's input unchanged, which makes it useful for trying out
# jobpipe end to end:
#   {"fail": "msg"}  -> the job fails with ValueError("msg") (an error report)
#   {"stream": N}    -> N partial results {"part": 0} .. {"part": N-1}
# Run from the repository root:  jobpipe ... -- python3 handlers/python/echo.py
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jobpipe_handler import serve  # noqa: E402


def init():
    # A real handler would load its model here. This print goes to stderr,
    # not to the protocol channel, because serve() has redirected stdout.
    print("echo handler loading...")


def stream_parts(count):
    for i in range(count):
        yield {"part": i}


def handler(job):
    value = job.get("input")
    if isinstance(value, dict):
        if "fail" in value:
            raise ValueError(value["fail"])
        count = value.get("stream")
        if isinstance(count, int) and not isinstance(count, bool):
            return stream_parts(count)
    return value


if __name__ == "__main__":
    serve(handler, init=init)
