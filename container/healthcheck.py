"""Container health check for jobpipe's image.

Asks jobpipe's health endpoint (GET /health on JOBPIPE_METRICS_ADDR) and exits
0 when it answers 200, 1 otherwise. Without JOBPIPE_METRICS_ADDR there is
nothing to ask, and the check succeeds: the container's liveness is then
jobpipe's own process, which exits on a fatal error. Standard library only,
so any image with Python can run it.
"""

import http.client
import os
import sys

TIMEOUT_S = 3


def probe_target(addr):
    """The host and port to connect to for a listen address such as
    0.0.0.0:9090, [::]:9090 or 127.0.0.1:9090."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"JOBPIPE_METRICS_ADDR={addr!r} is not HOST:PORT")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def main():
    addr = os.environ.get("JOBPIPE_METRICS_ADDR", "").strip()
    if not addr:
        return 0
    try:
        host, port = probe_target(addr)
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        conn.request("GET", "/health")
        status = conn.getresponse().status
    except (OSError, ValueError, http.client.HTTPException) as e:
        print(f"healthcheck: GET /health on {addr}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: GET /health on {addr} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
