//! `jobpipe jobs`: the endpoint's job list (`GET /jobs`), a page at a
//! time or, with `--all`, following `nextCursor` to the end. A person at a
//! terminal gets a table; a pipe gets each job's JSON object on a line of
//! its own, as the server sent it, for `jq` and scripts.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::args::JobsArgs;
use super::error::ClientError;
use super::http::{Api, Call};
use super::output::{print_json, print_line};

/// One page of `GET /jobs`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    jobs: Vec<Box<RawValue>>,
    #[serde(default)]
    next_cursor: Option<String>,
}

/// The columns of the table.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    status: Value,
    #[serde(default)]
    created_at: Value,
    #[serde(default)]
    attempts: Value,
}

pub(crate) async fn list(api: &Api, args: &JobsArgs) -> Result<(), ClientError> {
    let table = std::io::stdout().is_terminal();
    if table {
        print_row("ID", "STATUS", "CREATED", "ATTEMPTS");
    }
    let mut cursor = args.cursor.clone();
    loop {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(status) = &args.status {
            query.push(("status", status.to_ascii_uppercase()));
        }
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let call = Call {
            query: &query,
            ..Call::get(&["jobs"])
        };
        let answer = api.call(call).await.map_err(no_job_list)?;
        let page: Page = serde_json::from_str(&answer.text).map_err(|e| {
            ClientError::Usage(format!(
                "the job list is not in the expected shape ({e}); is --endpoint a jobpipe endpoint?"
            ))
        })?;
        for job in &page.jobs {
            if table {
                print_job(job);
            } else {
                print_json(job.get());
            }
        }
        match page.next_cursor {
            Some(next) if args.all => cursor = Some(next),
            Some(next) => {
                eprintln!("more jobs: add --cursor {next} for the next page, or --all");
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// A 404 from a server without the route says so.
fn no_job_list(error: ClientError) -> ClientError {
    match error {
        ClientError::Http {
            method,
            path,
            code: 404,
            ..
        } => ClientError::Http {
            method,
            path,
            code: 404,
            message: "this server has no job list (a jobpipe older than GET /jobs, or not jobpipe)"
                .into(),
        },
        other => other,
    }
}

fn print_job(job: &RawValue) {
    let row: Row = serde_json::from_str(job.get()).unwrap_or(Row {
        id: Value::Null,
        status: Value::Null,
        created_at: Value::Null,
        attempts: Value::Null,
    });
    print_row(
        &plain(&row.id),
        &plain(&row.status),
        &time(&row.created_at),
        &plain(&row.attempts),
    );
}

fn print_row(id: &str, status: &str, created: &str, attempts: &str) {
    print_line(&format!(
        "{id:<36}  {status:<11}  {created:<20}  {attempts}"
    ));
}

/// A value as a cell: strings without quotes, nothing as "-".
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A time as RFC 3339: the server's text as it is, or milliseconds since
/// the epoch written out.
fn time(value: &Value) -> String {
    match value.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        None => plain(value),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(time(&json!(1_700_000_000_123u64)), "2023-11-14T22:13:20Z");
        assert_eq!(time(&json!("2026-01-02T03:04:05Z")), "2026-01-02T03:04:05Z");
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn a_server_without_the_route_is_named() {
        let error = no_job_list(ClientError::Http {
            method: "GET".into(),
            path: "/v2/x/jobs".into(),
            code: 404,
            message: "no such route".into(),
        });
        assert!(
            error.to_string().contains("this server has no job list"),
            "{error}"
        );
    }
}
