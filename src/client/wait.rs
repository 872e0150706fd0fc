//! `jobpipe submit --wait`: follows a submitted job to its end. Every
//! [`POLL`] it reads the partials not read yet (`/stream/ID`, printed as
//! they come) and the job's status (`/status/ID`, whose `output` is the
//! handler's latest progress update while the job runs); when the job has
//! ended it reads the partials one last time and prints the final output.
//!
//! The endpoint going away for a while (a restart, a dropped connection,
//! 5xx, 429) is waited out with back-off for up to [`GIVE_UP`], not a
//! failure: the job runs on without the client. Ctrl-C stops the waiting
//! only.

use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::MissedTickBehavior;

use super::display::Display;
use super::error::ClientError;
use super::http::{Answer, Api, Call};
use super::output::{raw_field, stream_outputs};
use crate::backoff::BackoffPolicy;

/// How often the job is looked at: quick enough for a progress display,
/// two light requests per look.
const POLL: Duration = Duration::from_millis(300);
/// The pauses between tries when the endpoint cannot answer.
const RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(10), 0.2);
/// How long the endpoint may fail to answer before the client gives up.
const GIVE_UP: Duration = Duration::from_secs(300);

/// The statuses a job does not leave (but by `/retry`).
const FINAL: [&str; 4] = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];

/// Follows job `id` until it ends; Ok if it ended COMPLETED.
pub(crate) async fn follow(api: &Api, id: &str) -> Result<(), ClientError> {
    let mut display = Display::new(id);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let look = tokio::select! {
            look = look(api, id, &display, &mut poll) => look?,
            _ = &mut interrupted => {
                display.finish();
                return Err(ClientError::Interrupted { id: id.to_owned() });
            }
        };
        match look {
            Look::Running { status, progress } => {
                display.update(&status, progress.as_deref().map(RawValue::get));
            }
            Look::Ended { status, answer } => {
                display.update(&status, None);
                display.finish();
                return ended(id, &status, &answer, &display);
            }
        }
    }
}

/// What one look at the job found.
enum Look {
    Running {
        status: String,
        progress: Option<Box<RawValue>>,
    },
    Ended {
        status: String,
        answer: Answer,
    },
}

/// Waits for the next tick, prints the partials not read yet and reads
/// the job's status.
async fn look(
    api: &Api,
    id: &str,
    display: &Display,
    poll: &mut tokio::time::Interval,
) -> Result<Look, ClientError> {
    poll.tick().await;
    print_partials(api, id, display).await?;
    let answer = patient(api, display, &["status", id]).await?;
    let status = answer.value["status"]
        .as_str()
        .unwrap_or("UNKNOWN")
        .to_owned();
    if FINAL.contains(&status.as_str()) {
        // Partials written just before the end and not read yet.
        print_partials(api, id, display).await?;
        return Ok(Look::Ended { status, answer });
    }
    let progress = match status.as_str() {
        "IN_PROGRESS" => raw_field(&answer.text, "output"),
        _ => None,
    };
    Ok(Look::Running { status, progress })
}

/// Prints the partials of job `id` not read before, one JSON line each.
async fn print_partials(api: &Api, id: &str, display: &Display) -> Result<(), ClientError> {
    let stream = patient(api, display, &["stream", id]).await?;
    for output in stream_outputs(&stream.text) {
        display.print(output.get());
    }
    Ok(())
}

/// The end of a job that ended with `status`: its output printed if it
/// completed, the error otherwise.
fn ended(id: &str, state: &str, status: &Answer, display: &Display) -> Result<(), ClientError> {
    if state == "COMPLETED" {
        let output = raw_field(&status.text, "output");
        display.print(output.as_deref().map_or("null", |o| o.get()));
        return Ok(());
    }
    let detail = match &status.value["error"] {
        Value::Null => None,
        Value::String(text) => Some(report_message(text, id).unwrap_or_else(|| text.clone())),
        other => Some(other.to_string()),
    };
    Err(ClientError::JobNotCompleted {
        id: id.to_owned(),
        status: state.to_owned(),
        detail,
    })
}

/// The message of an error report (the JSON text jobpipe and the RunPod
/// SDK put in a failed job's `error`), pointing at the whole report: its
/// traceback is not for a one-line message.
fn report_message(error: &str, id: &str) -> Option<String> {
    let report: Value = serde_json::from_str(error).ok()?;
    let message = report["error_message"].as_str()?;
    let kind = report["error_type"]
        .as_str()
        .map(|kind| format!(" ({kind})"))
        .unwrap_or_default();
    Some(format!(
        "{message}{kind}; the whole report: jobpipe status {id}"
    ))
}

/// GET `segments`, waiting out an endpoint that cannot answer for now.
async fn patient(api: &Api, display: &Display, segments: &[&str]) -> Result<Answer, ClientError> {
    let mut delays = RETRY.iter();
    let mut failing_since: Option<Instant> = None;
    loop {
        match api.call(Call::get(segments)).await {
            Ok(answer) => return Ok(answer),
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GIVE_UP {
                    return Err(e);
                }
                let delay = delays.next().unwrap_or(RETRY.max);
                display.note(&format!(
                    "jobpipe: {e}; trying again in {:.1}s",
                    delay.as_secs_f64()
                ));
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_report_is_shown_by_its_message() {
        let report = r#"{"error_type": "<class 'ValueError'>", "error_message": "out of memory", "error_traceback": "..."}"#;
        assert_eq!(
            report_message(report, "j1").unwrap(),
            "out of memory (<class 'ValueError'>); the whole report: jobpipe status j1"
        );
        assert_eq!(report_message("it went wrong", "j1"), None);
    }
}
