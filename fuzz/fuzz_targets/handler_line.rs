//! One stdout line of a handler, as jobpipe reads it: it must be understood
//! or rejected with a reason, never panic.

#![no_main]

use jobpipe::handler::protocol::{parse_line, sniff_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let _ = parse_line(line);
    let _ = sniff_id(line, ["job-1", "a\"b", "ü"]);
});
