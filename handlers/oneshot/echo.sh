#!/bin/sh
# echo.sh - example jobpipe handler for one-shot mode (--mode oneshot).
# jobpipe starts this script once per job, writes the job as one JSON line on
# stdin and closes it; whatever the script prints on stdout is the result.
# This one answers {"job_id": "<JOBPIPE_JOB_ID>", "job": <the job line>}.
# A job line containing "fail" makes it fail: message on stderr, exit status 3.
set -eu

# Read the single job line (the last line may lack a trailing newline).
IFS= read -r job || [ -n "${job:-}" ] || { echo "echo.sh: no job on stdin" >&2; exit 2; }

case $job in
  *'"fail"'*)
    echo "echo.sh: job asked to fail" >&2
    exit 3
    ;;
esac

# Escape backslashes and double quotes so the id is a valid JSON string.
job_id=$(printf '%s' "${JOBPIPE_JOB_ID:-}" | sed 's/\\/\\\\/g; s/"/\\"/g')

printf '{"job_id": "%s", "job": %s}\n' "$job_id" "$job"
