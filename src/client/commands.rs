//! The client's commands, each a request or two: `submit` (and the wait
//! after it), and `status`, `cancel`, `retry`, which print the server's
//! answer as it came.

use super::args::SubmitArgs;
use super::error::ClientError;
use super::http::{Api, Call};
use super::input::{self, Policy, RunBody};
use super::output::{print_json, print_line};

/// `jobpipe submit`: POST /run; the id on stdout, or with `--wait` the
/// job followed to its end.
pub(crate) async fn submit(api: &Api, args: &SubmitArgs) -> Result<(), ClientError> {
    // The input is read and checked before anything is sent.
    let input = input::read(args.input.as_deref(), args.input_file.as_deref())?;
    let body = RunBody {
        input: &input,
        webhook: args.webhook.as_deref(),
        policy: args.priority.map(|priority| Policy { priority }),
    };
    let call = Call {
        body: Some(body.to_json()),
        idempotency_key: args.idempotency_key.as_deref(),
        ..Call::post(&["run"])
    };
    let answer = api.call(call).await?;
    let Some(id) = answer.value["id"].as_str() else {
        return Err(ClientError::Transport {
            method: "POST".into(),
            path: "/run".into(),
            cause: format!("the answer has no job id: {}", answer.text),
            transient: false,
        });
    };
    if !args.wait {
        print_line(id);
        return Ok(());
    }
    super::wait::follow(api, id).await
}

/// `jobpipe status|cancel|retry ID`: the one request, its answer printed.
pub(crate) async fn one_job(api: &Api, call: Call<'_>) -> Result<(), ClientError> {
    let answer = api.call(call).await?;
    print_json(&answer.text);
    Ok(())
}
