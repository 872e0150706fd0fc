# async_echo.py - example jobpipe handler (persistent mode) that holds many
# jobs at once, built on jobpipe_handler.py: an async handler runs its jobs
# concurrently in one event loop (use it with --jobs-per-handler above 1),
# and a cancel line from jobpipe cancels just that job.
#   {"ms": N, ...}  -> waits N milliseconds, then returns the input
# Run: jobpipe --jobs-per-handler 8 -- python3 handlers/python/async_echo.py
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jobpipe_handler import serve  # noqa: E402


async def handler(job):
    value = job.get("input")
    if isinstance(value, dict) and isinstance(value.get("ms"), (int, float)):
        await asyncio.sleep(value["ms"] / 1000.0)
    return value


if __name__ == "__main__":
    serve(handler)
