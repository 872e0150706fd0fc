//! The body of a job take, as RunPod sends it: one job object, a list of
//! them (batch take), or anything else. Each job is checked as jobpipe
//! checks a taken job; nothing may panic.

#![no_main]

use jobpipe::job::Job;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let jobs = match value {
        Value::Array(jobs) => jobs,
        job => vec![job],
    };
    for job in jobs {
        if let Ok(job) = Job::from_value(job) {
            // The line sent to the handler must read back as the same job.
            let again: Value = serde_json::from_str(&job.line).expect("the job line is JSON");
            assert_eq!(Job::from_value(again).map(|j| j.id).ok(), Some(job.id));
        }
    }
});
