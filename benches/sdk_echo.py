# sdk_echo.py - the echo handler written for the official runpod Python SDK,
# used by examples/bench.rs to compare jobpipe with the SDK's own worker.
# It returns each job's input unchanged, like handlers/python/echo.py.
#
# The SDK reads RUNPOD_WEBHOOK_GET_JOB, RUNPOD_WEBHOOK_POST_OUTPUT,
# RUNPOD_AI_API_KEY, RUNPOD_POD_ID, ... from the environment.
# BENCH_CONCURRENCY (default 1) sets how many jobs the SDK runs at once.
import os

import runpod

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "1"))


def handler(job):
    return job["input"]


def concurrency_modifier(_current):
    return CONCURRENCY


if __name__ == "__main__":
    runpod.serverless.start(
        {"handler": handler, "concurrency_modifier": concurrency_modifier}
    )
