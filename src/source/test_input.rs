//! Local test mode: run one job, print its result, and exit 0 if it
//! succeeded (and matched `--test-output`), 1 if not. CI pipelines rely on
//! these exit codes.

use serde_json::{json, Value};

use super::SourceContext;
use crate::error::exit;
use crate::job::{Job, JobEvent, JobResult, Outcome};

/// Runs the test job; returns the exit code.
pub async fn run(job: Value, expected: Option<Value>, ctx: SourceContext) -> u8 {
    let job = match Job::from_value(job) {
        Ok(job) => job,
        Err((message, _)) => {
            tracing::error!("invalid test job: {message}");
            return exit::JOB_FAILED;
        }
    };
    let id = job.id.clone();
    let mut slots = tokio::select! {
        slots = ctx.pool.free_slots() => slots,
        _ = ctx.shutdown.take.cancelled() => {
            tracing::info!(job_id = %id, "shut down before the test job started");
            return exit::JOB_FAILED;
        }
    };
    let slot = slots.swap_remove(0);
    drop(slots);
    tracing::info!(job_id = %id, "running test job");
    let mut events = ctx
        .pool
        .submit(slot, job)
        .expect("the only job cannot be a duplicate");
    let mut partials = Vec::new();
    let result = loop {
        match events.recv().await {
            Some(JobEvent::Progress(value)) => tracing::info!(job_id = %id, "progress: {value}"),
            Some(JobEvent::Stream(value)) => {
                tracing::info!(job_id = %id, "stream: {value}");
                partials.push(value);
            }
            Some(JobEvent::Done(result)) => break result,
            None => unreachable!("a ticket always sends its result before it is dropped"),
        }
    };
    report(&id, result, partials, expected)
}

/// Prints the result on stdout and decides the exit code.
fn report(id: &str, result: JobResult, partials: Vec<Value>, expected: Option<Value>) -> u8 {
    let (line, output) = match result.outcome {
        Outcome::Output(output) => {
            let output = if result.streamed && is_empty_list(&output) {
                Value::Array(partials)
            } else {
                output
            };
            (
                json!({"id": id, "status": "COMPLETED", "output": output}),
                Some(output),
            )
        }
        Outcome::Error { error, output } => {
            let mut line = json!({"id": id, "status": "FAILED", "error": error});
            if let Some(output) = output {
                line["output"] = output;
            }
            (line, None)
        }
        Outcome::Cancelled => (json!({"id": id, "status": "CANCELLED"}), None),
    };
    println!("{line}");
    let Some(output) = output else {
        tracing::error!(job_id = %id, "test job failed: {}", describe_error(&line));
        return exit::JOB_FAILED;
    };
    match expected {
        Some(expected) if expected != output => {
            tracing::error!(job_id = %id, "output does not match --test-output: expected {expected}, got {output}");
            exit::JOB_FAILED
        }
        Some(_) => {
            tracing::info!(job_id = %id, "test job succeeded and its output matches --test-output");
            exit::OK
        }
        None => {
            tracing::info!(job_id = %id, "test job succeeded");
            exit::OK
        }
    }
}

/// The error of a failed job for a person: the message of a jobpipe error
/// report, or the handler's own error text.
fn describe_error(line: &Value) -> String {
    let Some(error) = line["error"].as_str() else {
        return "cancelled".into();
    };
    match serde_json::from_str::<Value>(error) {
        Ok(report) if report["error_message"].is_string() => {
            let traceback = report["error_traceback"].as_str().unwrap_or_default();
            let mut text = format!(
                "{}: {}",
                report["error_type"].as_str().unwrap_or("Error"),
                report["error_message"].as_str().unwrap_or_default()
            );
            if !traceback.is_empty() {
                text.push_str("; handler stderr ended with:\n");
                text.push_str(traceback);
            }
            text
        }
        _ => error.to_owned(),
    }
}

fn is_empty_list(value: &Value) -> bool {
    value.as_array().is_some_and(Vec::is_empty) || value.is_null()
}
