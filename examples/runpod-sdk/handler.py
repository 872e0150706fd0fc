"""handler.py - a handler file written for the runpod Python SDK, unchanged.

jobpipe runs it through handlers/python/jobpipe_runpod.py, with or without
the runpod package installed (from the repository root):

    jobpipe --test-input '{"input": {"prompt": "hi"}}' -- \
        python3 handlers/python/jobpipe_runpod.py examples/runpod-sdk/handler.py
"""
import runpod


def handler(job):
    prompt = job["input"].get("prompt", "")
    return {"answer": prompt.upper()}


runpod.serverless.start({"handler": handler})
