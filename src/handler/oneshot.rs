//! One-shot mode: a fresh handler process for every job.
//!
//! The job line goes to stdin followed by end of file; the whole of stdout
//! is the result. JSON that parses is the output (a top-level object with
//! `error` is a failed job); other text is the output as a string. A
//! non-zero exit fails the job with the exit status and the stderr tail.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::config::HandlerConfig;
use super::lines::Line;
use super::process::HandlerProcess;
use super::ActorContext;
use crate::job::{FailureKind, JobFailure, JobResult, JobTicket, Outcome};
use crate::json::Json;
use crate::timer::{sleep_for, sleep_until};

/// How long stdout may stay open (held by a grandchild) after the handler
/// exited before the output is taken as complete.
const STDOUT_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Runs jobs one after another, each in a new process, until the pool stops.
pub async fn run(mut ctx: ActorContext) {
    // A one-shot slot needs no warm process: it is ready from the start.
    ctx.metrics.handler_up();
    serve(&mut ctx).await;
    ctx.metrics.handler_down();
}

async fn serve(ctx: &mut ActorContext) {
    loop {
        // A fresh process per job needs no warm-up: room for one job
        // whenever none is running.
        ctx.room.set(1);
        let ticket = tokio::select! {
            biased;
            _ = ctx.force.cancelled() => return,
            _ = ctx.stop.cancelled() => return,
            ticket = ctx.queue.recv() => match ticket {
                Ok(ticket) => ticket,
                Err(_) => return,
            },
        };
        ctx.room.set(0);
        run_job(ctx, ticket).await;
    }
}

/// What ended a one-shot run before its process exited by itself.
enum Interrupt {
    Timeout,
    Stalled(Duration),
    Cancel,
    Force,
}

async fn run_job(ctx: &ActorContext, mut ticket: JobTicket) {
    if ticket.is_cancelled() {
        ticket.finish(JobResult::cancelled());
        return;
    }
    let config = &ctx.config;
    let mut process = match HandlerProcess::spawn(
        config,
        &ctx.identity.worker_id,
        Some((ticket.id(), ticket.job.dir.as_deref())),
    ) {
        Ok(process) => process,
        Err(e) => {
            ticket.fail(JobFailure::new(
                FailureKind::HandlerStart,
                format!("cannot execute handler {:?}: {e}", config.argv[0]),
            ));
            return;
        }
    };
    process.send(std::mem::take(&mut ticket.job.line));
    process.close_stdin();
    let limit = config.max_output_size;
    let mut stdout = Vec::new();
    let mut too_large = None;
    let mut stdout_open = true;
    let timeout = sleep_for(config.job_timeout);
    tokio::pin!(timeout);
    // A one-shot handler is heard from through any line on its stdout.
    let stall = ticket.job.stall_timeout.or(config.stall_timeout);
    let mut quiet_until = stall.map(|limit| Instant::now() + limit);
    let cancel = ticket.cancel.clone();
    let interrupt = loop {
        tokio::select! {
            biased;
            _ = ctx.force.cancelled() => break Some(Interrupt::Force),
            _ = cancel.cancelled() => break Some(Interrupt::Cancel),
            _ = &mut timeout => break Some(Interrupt::Timeout),
            _ = sleep_until(quiet_until), if quiet_until.is_some() => {
                break Some(Interrupt::Stalled(stall.unwrap_or_default()))
            }
            line = process.stdout.recv(), if stdout_open => match line {
                Some(line) => {
                    quiet_until = stall.map(|limit| Instant::now() + limit);
                    collect(&mut stdout, &mut too_large, line, limit)
                }
                None => stdout_open = false,
            },
            _ = process.exit.wait() => break None,
        }
    };
    let status = match interrupt {
        None => {
            // Output written just before the exit may still be in the pipe.
            let drain = tokio::time::sleep(STDOUT_AFTER_EXIT);
            tokio::pin!(drain);
            while stdout_open {
                tokio::select! {
                    line = process.stdout.recv() => match line {
                        Some(line) => collect(&mut stdout, &mut too_large, line, limit),
                        None => stdout_open = false,
                    },
                    _ = &mut drain => break,
                }
            }
            process.exited().await
        }
        Some(Interrupt::Force) => {
            process.kill().await;
            ticket.fail(JobFailure::new(
                FailureKind::WorkerShutdown,
                "the worker was shut down (forced) while the job was running",
            ));
            return;
        }
        Some(Interrupt::Cancel) => {
            process.stop(config.kill_grace, &ctx.force).await;
            ticket.finish(JobResult::cancelled());
            return;
        }
        Some(Interrupt::Stalled(limit)) => {
            let tail = process.stderr_tail().await;
            ticket.fail(
                JobFailure::new(FailureKind::Stalled, HandlerConfig::stall_message(limit))
                    .with_stderr(tail),
            );
            process.stop(config.kill_grace, &ctx.force).await;
            return;
        }
        Some(Interrupt::Timeout) => {
            let tail = process.stderr_tail().await;
            ticket.fail(
                JobFailure::new(FailureKind::Timeout, config.timeout_message()).with_stderr(tail),
            );
            process.stop(config.kill_grace, &ctx.force).await;
            return;
        }
    };
    let tail = process.stderr_tail().await;
    // Whatever the handler left behind in its group goes with it.
    process.stop(Duration::ZERO, &ctx.force).await;
    if status != crate::os::ExitStatus::Code(0) {
        ticket.fail(
            JobFailure::new(FailureKind::HandlerCrashed, format!("handler {status}"))
                .with_stderr(tail),
        );
        return;
    }
    if let Some(len) = too_large {
        ticket.fail(JobFailure::new(
            FailureKind::OutputTooLarge,
            format!("the handler's output is at least {len} bytes, more than the {limit} byte limit (--max-output-size)"),
        ));
        return;
    }
    let mut result = parse_output(&stdout);
    result.refresh_worker |= config.refresh_worker;
    ticket.finish(result);
}

/// Adds one stdout line to the output, unless the output is already over
/// the limit (then only its size is counted).
fn collect(stdout: &mut Vec<u8>, too_large: &mut Option<usize>, line: Line, limit: usize) {
    let len = match &line {
        Line::Whole(bytes) => bytes.len() + 1,
        Line::TooLong { len, .. } | Line::Spilled { len, .. } | Line::Unspilled { len, .. } => {
            len + 1
        }
    };
    if let Some(total) = too_large {
        *total += len;
        return;
    }
    match line {
        Line::Whole(bytes) if stdout.len() + bytes.len() <= limit => {
            stdout.extend_from_slice(&bytes);
            stdout.push(b'\n');
        }
        _ => *too_large = Some(stdout.len() + len),
    }
}

/// Turns a one-shot handler's stdout into its result.
pub fn parse_output(stdout: &[u8]) -> JobResult {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    let Ok(value) = serde_json::from_str::<Value>(trimmed) else {
        return JobResult::output(Value::String(trimmed.to_owned()).into());
    };
    let Value::Object(mut obj) = value else {
        return JobResult::output(value.into());
    };
    let refresh_worker = obj.remove("refresh_worker") == Some(Value::Bool(true));
    for key in ["output_file", "output_files"] {
        if let Some(files) = obj.remove(key) {
            return JobResult {
                outcome: Outcome::Files(Json::from_value(&serde_json::json!({ key: files }))),
                refresh_worker,
                streamed: false,
            };
        }
    }
    let outcome = match obj.remove("error") {
        Some(error) if !error.is_null() => Outcome::Error {
            error: match error {
                Value::String(text) => text,
                other => other.to_string(),
            },
            output: obj.remove("output").map(Json::from),
        },
        _ => Outcome::Output(Value::Object(obj).into()),
    };
    JobResult {
        outcome,
        refresh_worker,
        streamed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_output_is_parsed_and_text_is_kept_as_text() {
        assert_eq!(
            parse_output(b"{\"a\": 1}\n").outcome,
            Outcome::Output(json!({"a": 1}).into())
        );
        assert_eq!(
            parse_output(b"hello\n").outcome,
            Outcome::Output(json!("hello").into())
        );
        assert_eq!(
            parse_output(b"two\nlines\n").outcome,
            Outcome::Output(json!("two\nlines").into())
        );
        assert_eq!(parse_output(b"").outcome, Outcome::Output(json!("").into()));
    }

    #[test]
    fn a_top_level_error_fails_the_job() {
        let result = parse_output(br#"{"error": "no GPU", "output": 1, "refresh_worker": true}"#);
        assert_eq!(
            result.outcome,
            Outcome::Error {
                error: "no GPU".into(),
                output: Some(json!(1).into())
            }
        );
        assert!(result.refresh_worker);
    }

    #[test]
    fn output_over_the_limit_is_only_counted() {
        let mut out = Vec::new();
        let mut too_large = None;
        collect(
            &mut out,
            &mut too_large,
            Line::Whole(bytes::Bytes::from_static(b"12345")),
            8,
        );
        collect(
            &mut out,
            &mut too_large,
            Line::Whole(bytes::Bytes::from_static(b"6789")),
            8,
        );
        assert_eq!(too_large, Some(11));
        assert_eq!(out, b"12345\n");
    }
}
