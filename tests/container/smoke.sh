#!/usr/bin/env bash
# Container smoke test: builds the real Dockerfile with podman and runs the
# image the way users do.
#
#   - hadolint finds nothing in the Dockerfiles;
#   - a test job (README's command, and from the environment alone) prints
#     its result and exits 0;
#   - worker mode against a stand-in queue on the host's loopback (host
#     networking), configured from environment variables only: jobpipe is
#     PID 1 and reaps an orphaned grandchild; the health check answers;
#     `podman stop` (SIGTERM) lets the job in flight finish, posts its
#     result, takes nothing more and exits 0; a second SIGTERM kills the
#     job in flight, reports it failed and exits 5;
#   - the binary, copied into a handler image with an older glibc by
#     examples/add-to-image/Dockerfile, runs a job there.
#
# The build does not use the network (containers here cannot make HTTPS
# connections): setup.sh vendors the crates of the current Cargo.lock and
# downloads the wheels the Dockerfile pins into the local stand-ins of the
# base images. Run as root. Prints the time it took.
set -euo pipefail

started=$SECONDS
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$repo/target/container
image=localhost/jobpipe:smoke
old_glibc_image=localhost/jobpipe-smoke/python-bullseye:latest
export CONTAINERS_CONF=$repo/tests/container/containers.conf
mkdir -p "$work"
# shellcheck source=tests/container/setup.sh
source "$repo/tests/container/setup.sh"

# Without systemd, podman 4 logs an error for every container whose image
# has a health check (it cannot set up the timer); `podman healthcheck run`
# works all the same.
podman() {
    command podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2)
}

passed=0
queue_pid=
containers=()

cleanup() {
    [[ -n "$queue_pid" ]] && kill "$queue_pid" 2>/dev/null
    for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

fail() {
    echo "smoke: FAIL: $*" >&2
    echo "smoke: 0 passed, 1 failed (after $passed passed checks)" >&2
    exit 1
}

ok() {
    passed=$((passed + 1))
    echo "smoke: ok: $*"
}

# Runs COMMAND until it succeeds, at most SECONDS seconds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

# Prints the log entries of the stand-in queue for ROUTE (and job id JOB).
queue_log() {
    python3 - "$queue_log" "$@" <<'EOF'
import json, sys
path, route, job = sys.argv[1], sys.argv[2], (sys.argv[3:] or [None])[0]
for line in open(path, encoding="utf-8"):
    e = json.loads(line)
    if e["route"] != route:
        continue
    if job is None or job in e["jobs"] or e["path"].endswith("/" + job):
        print(line, end="")
EOF
}

has_entry() { [[ -n "$(queue_log "$@")" ]]; }

# Starts the stand-in queue with the given jobs (JSON objects).
start_queue() {
    queue_log=$work/queue-$1.log
    shift
    local port_file=$work/queue.port args=() base
    rm -f "$queue_log" "$port_file"
    touch "$queue_log"
    for job in "$@"; do args+=(--job "$job"); done
    python3 "$repo/tests/container/fake_queue.py" --port-file "$port_file" --log "$queue_log" \
        "${args[@]}" &
    queue_pid=$!
    wait_for 10 "the stand-in queue" test -s "$port_file"
    base="http://127.0.0.1:$(cat "$port_file")/v2/ep"
    worker_env=(
        -e "RUNPOD_WEBHOOK_GET_JOB=$base/job-take/\$RUNPOD_POD_ID?gpu=none"
        -e "RUNPOD_WEBHOOK_POST_OUTPUT=$base/job-done/\$RUNPOD_POD_ID/\$ID?gpu=none"
        -e "RUNPOD_WEBHOOK_POST_STREAM=$base/job-stream/\$RUNPOD_POD_ID/\$ID?gpu=none"
        -e "RUNPOD_WEBHOOK_PING=$base/ping/\$RUNPOD_POD_ID?gpu=none"
        -e RUNPOD_AI_API_KEY=smoke-key -e RUNPOD_POD_ID=pod-1
        -e "JOBPIPE_HANDLER=python3 /fixtures/fake_handler.py"
        -v "$repo/tests/fixtures:/fixtures:ro" --network=host
    )
}

stop_queue() {
    kill "$queue_pid"
    wait "$queue_pid" 2>/dev/null || true
    queue_pid=
}

# The body of the job-done post for JOB as JSON, parsed by the python
# expression EXPR over `body`.
done_body() {
    queue_log job-done "$1" | python3 -c '
import json, sys
bodies = [json.loads(json.loads(line)["body"]) for line in sys.stdin]
finals = [b for b in bodies if b.get("status") != "IN_PROGRESS"]
body = finals[-1] if finals else None
print(eval(sys.argv[1]))' "$2"
}

exit_code() { podman inspect --format '{{.State.ExitCode}}' "$1"; }

lint() {
    local out
    if ! out=$("$tools_venv/bin/hadolint" "$repo/Dockerfile" "$repo/examples/add-to-image/Dockerfile" 2>&1); then
        printf '%s\n' "$out"
        fail "hadolint found problems"
    fi
    ok "hadolint: Dockerfile and examples/add-to-image/Dockerfile are clean"
}

build_image() {
    local t0=$SECONDS
    # docker format: the OCI format has no HEALTHCHECK.
    podman build --pull=never --format docker -t "$image" "$repo" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; fail "podman build"; }
    ok "the image builds offline from vendored crates ($((SECONDS - t0)) s)"
    local size base
    size=$(podman image inspect --format '{{.Size}}' "$image")
    base=$(podman image inspect --format '{{.Size}}' docker.io/library/debian:bookworm-slim)
    echo "smoke: image size $((size / 1000000)) MB (its base $((base / 1000000)) MB)"
}

test_job() {
    local out
    out=$(podman run --rm "$image" --test-input '{"input": {"name": "x"}}') ||
        fail "the README's test job exited $?"
    [[ "$out" == *'"output":{"name":"x"}'* ]] || fail "the test job printed $out"
    ok "a test job with the default handler prints its result and exits 0"
    out=$(podman run --rm -e 'JOBPIPE_TEST_INPUT={"input": {"n": 1}}' -e 'JOBPIPE_TEST_OUTPUT={"n": 1}' \
        "$image") || fail "the test job configured by environment exited $?"
    [[ "$out" == *'"output":{"n":1}'* ]] || fail "the test job printed $out"
    ok "a test job configured by environment variables alone prints its result and exits 0"
}

# The number of zombie processes in container C.
zombies() {
    podman exec "$1" python3 -c '
import os
count = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open("/proc/%s/stat" % pid).read()
    except OSError:
        continue
    count += stat[stat.rindex(")") + 2] == "Z"
print(count)'
}

# A TCP port on the host's loopback that nothing listens on.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

test_graceful_stop() {
    local c=jobpipe-smoke-graceful
    start_queue graceful \
        '{"id": "job-orphan", "input": {"do": "orphan", "linger_ms": 100, "check_after_ms": 3000}}' \
        '{"id": "job-slow", "input": {"do": "sleep", "ms": 8000}}' \
        '{"id": "job-never", "input": {}}'
    containers+=("$c")
    podman run -d --name "$c" "${worker_env[@]}" "$image" >/dev/null

    wait_for 60 "the orphan job's result" has_entry job-done job-orphan
    [[ "$(done_body job-orphan 'body["output"]["orphan_state"]')" == gone ]] ||
        fail "the orphaned grandchild was not reaped: $(queue_log job-done job-orphan)"
    ok "an orphaned grandchild of the handler is reaped"

    wait_for 30 "the slow job to be taken" has_entry job-take job-slow
    [[ "$(podman exec "$c" cat /proc/1/cmdline | tr '\0' ' ')" == "jobpipe " ]] ||
        fail "PID 1 is $(podman exec "$c" cat /proc/1/cmdline | tr '\0' ' ')"
    [[ "$(zombies "$c")" == 0 ]] || fail "zombies in the container"
    ok "jobpipe is PID 1 and the container has no zombie"

    # Without JOBPIPE_METRICS_ADDR the check has nothing to ask and passes.
    podman healthcheck run "$c" >/dev/null || fail "the health check failed without a metrics address"
    ok "the health check passes when no metrics address is set"

    podman stop -t 60 "$c" >/dev/null
    [[ "$(exit_code "$c")" == 0 ]] || fail "exit code $(exit_code "$c") after SIGTERM"
    [[ "$(done_body job-slow 'body.get("output", {}).get("ms")')" == 8000 ]] ||
        fail "no output posted for the job in flight: $(queue_log job-done job-slow)"
    ! has_entry job-take job-never || fail "a job was taken after SIGTERM"
    ok "podman stop: the job in flight finishes, its result is posted, no job is taken, exit 0"
    stop_queue
}

test_forced_stop() {
    local c=jobpipe-smoke-forced
    start_queue forced '{"id": "job-hang", "input": {"do": "hang"}}'
    containers+=("$c")
    podman run -d --name "$c" "${worker_env[@]}" -e JOBPIPE_SHUTDOWN_TIMEOUT=5m \
        -e "JOBPIPE_METRICS_ADDR=127.0.0.1:$(free_port)" "$image" >/dev/null
    wait_for 60 "the hanging job to be taken" has_entry job-take job-hang

    # jobpipe serves /health on its metrics address, so the check passes.
    podman healthcheck run "$c" >/dev/null || fail "the health check failed with a metrics address set"
    ! podman exec -e "JOBPIPE_METRICS_ADDR=127.0.0.1:$(free_port)" "$c" \
        python3 /usr/local/share/jobpipe/healthcheck.py 2>/dev/null ||
        fail "the health check passed with nothing listening at the metrics address"
    ok "the health check asks /health on JOBPIPE_METRICS_ADDR (healthy; fails when nothing answers)"

    podman kill --signal TERM "$c" >/dev/null
    wait_for 30 "jobpipe to start shutting down" sh -c "podman logs $c 2>&1 | grep -q 'shutting down'"
    podman kill --signal TERM "$c" >/dev/null
    [[ "$(podman wait "$c")" == 5 ]] || fail "exit code $(exit_code "$c") after a second SIGTERM"
    [[ "$(done_body job-hang 'body.get("error", "")')" == *WorkerShutdown* ]] ||
        fail "the job in flight was not reported failed: $(queue_log job-done job-hang)"
    ok "a second SIGTERM kills the job in flight, reports it failed (WorkerShutdown), exit 5"
    stop_queue
}

test_old_glibc() {
    local tag=localhost/jobpipe-smoke/add-to-image:latest out glibc
    podman build --pull=never -q -t "$tag" --build-arg "JOBPIPE_IMAGE=$image" \
        --build-arg "BASE_IMAGE=$old_glibc_image" "$repo/examples/add-to-image" >/dev/null ||
        fail "building examples/add-to-image/Dockerfile"
    glibc="glibc $(podman run --rm --entrypoint ldd "$tag" --version | awk 'NR == 1 { print $NF }')"
    out=$(podman run --rm -e 'JOBPIPE_TEST_INPUT={"input": {"name": "x"}}' "$tag") ||
        fail "the copied binary exited $? on $glibc"
    [[ "$out" == *'"greeting":"hello, x"'* ]] || fail "the copied binary printed $out"
    ok "examples/add-to-image: the copied binary runs a job on $glibc"
}

apt_install_missing
hadolint_install
lint
base_images
build_image
test_job
test_graceful_stop
test_forced_stop
test_old_glibc
echo "smoke: $passed passed, 0 failed"
echo "smoke: took $((SECONDS - started)) s"
