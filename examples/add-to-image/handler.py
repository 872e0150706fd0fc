"""handler.py - the handler of examples/add-to-image: greets the job's "name".

A real handler loads its model in init() and uses it in handler(job).
"""

from jobpipe_handler import serve


def init():
    print("loading the model...")  # goes to stderr: stdout is jobpipe's channel


def handler(job):
    return {"greeting": "hello, " + str(job["input"].get("name", "world"))}


if __name__ == "__main__":
    serve(handler, init=init)
