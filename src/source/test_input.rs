//! Local test mode: run one job, print its result, and exit 0 if it
//! succeeded (and matched `--test-output`), 1 if not. CI pipelines rely on
//! these exit codes.

use clap::Args;
use serde_json::{json, Value};

use crate::error::exit;
use crate::job::{Job, JobEvent, JobResult, Outcome};
use crate::json::Json;
use crate::runner::SourceContext;

/// The one local test job.
#[derive(Args)]
pub struct TestInputArgs {
    /// Run this one job (JSON with an "input") and exit 0 if it succeeded, 1 if not.
    #[arg(
        long,
        alias = "test_input",
        env = "JOBPIPE_TEST_INPUT",
        value_name = "JSON"
    )]
    pub test_input: Option<String>,

    /// Expected output of the test job; a mismatch exits 1.
    #[arg(
        long,
        alias = "test_output",
        env = "JOBPIPE_TEST_OUTPUT",
        value_name = "JSON"
    )]
    pub test_output: Option<String>,
}

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
                partials.push(value.to_value());
            }
            Some(JobEvent::Done(result)) => break result,
            None => unreachable!("a ticket always sends its result before it is dropped"),
        }
    };
    report(&id, result, partials, expected)
}

/// Prints the result on stdout and decides the exit code.
fn report(id: &str, result: JobResult, partials: Vec<Value>, expected: Option<Value>) -> u8 {
    let outcome = match result.outcome {
        // Only a source with an object store spills outputs; read back
        // for this report all the same.
        Outcome::Spilled(output) => match output.read() {
            Ok(text) => match Json::parse(text.into()) {
                Some(json) => Outcome::Output(json),
                None => Outcome::Error {
                    error: "the handler's output, kept in a file, is not JSON".into(),
                    output: None,
                },
            },
            Err(e) => Outcome::Error {
                error: format!("the handler's output, kept in a file, cannot be read: {e}"),
                output: None,
            },
        },
        outcome => outcome,
    };
    let (line, output) = match outcome {
        Outcome::Output(output) => {
            let output = output.to_value();
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
                line["output"] = output.to_value();
            }
            (line, None)
        }
        Outcome::Cancelled => (json!({"id": id, "status": "CANCELLED"}), None),
        Outcome::Spilled(_) => (
            json!({"id": id, "status": "FAILED", "error": "the handler's output was kept in a file and not read back"}),
            None,
        ),
        Outcome::Files(_) => (
            json!({"id": id, "status": "FAILED", "error": "the handler answered with output_file(s); files are uploaded only by a RunPod or endpoint worker with --object-store, not for a --test-input job"}),
            None,
        ),
    };
    println!("{line}");
    let Some(output) = output else {
        let (summary, traceback) = describe_error(&line);
        tracing::error!(job_id = %id, "test job failed: {summary}");
        if !traceback.is_empty() {
            // One log line per line, so line-based log readers keep every
            // line's level and job id.
            tracing::error!(job_id = %id, "error_traceback:");
            for text in traceback.lines() {
                tracing::error!(job_id = %id, "  {text}");
            }
        }
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

/// The error of a failed job for a person, and the traceback of an error
/// report (jobpipe's, or the runpod SDK's shape that handlers send).
fn describe_error(line: &Value) -> (String, String) {
    let Some(error) = line["error"].as_str() else {
        return ("cancelled".into(), String::new());
    };
    match serde_json::from_str::<Value>(error) {
        Ok(report) if report["error_message"].is_string() => {
            let kind = report["error_type"].as_str().unwrap_or("Error");
            // The SDK writes a Python exception's type as "<class 'ValueError'>".
            let kind = kind
                .strip_prefix("<class '")
                .and_then(|k| k.strip_suffix("'>"))
                .unwrap_or(kind);
            let message = report["error_message"].as_str().unwrap_or_default();
            let traceback = report["error_traceback"].as_str().unwrap_or_default();
            (format!("{kind}: {message}"), traceback.to_owned())
        }
        _ => (error.to_owned(), String::new()),
    }
}

fn is_empty_list(value: &Value) -> bool {
    value.as_array().is_some_and(Vec::is_empty) || value.is_null()
}
