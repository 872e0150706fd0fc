//! The bare reference worker of the benchmark: the least a RunPod worker can
//! do per job on this machine, to measure jobpipe against.
//!
//! One OS thread per slot, each with its own handler process and its own
//! keep-alive connection; blocking sockets and HTTP/1.1 written and read by
//! hand. Per job: `GET` the take URL, write the body and a newline to the
//! handler's stdin, read one line back, and `POST` it to the done URL with
//! the leading `"id":…,` cut out (so the body is `{"output":…}`, as jobpipe
//! posts it). It does none of what makes jobpipe a product: no retries, no
//! timeouts, no heartbeat, no job-stop poll, no spool, no logging, no
//! validation beyond what the handler protocol needs; SIGTERM simply ends it.
//!
//! ```sh
//! reference_worker [--concurrency N] -- HANDLER [ARGS...]
//! ```
//!
//! It reads `RUNPOD_WEBHOOK_GET_JOB`, `RUNPOD_WEBHOOK_POST_OUTPUT`,
//! `RUNPOD_AI_API_KEY` and `RUNPOD_POD_ID` like jobpipe, and understands
//! only `http://HOST:PORT/...` URLs. See docs/benchmark.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut concurrency = 1;
    if args.first().map(String::as_str) == Some("--concurrency") {
        concurrency = args
            .get(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| fail("--concurrency needs a number"));
        args.drain(..2);
    }
    if args.first().map(String::as_str) == Some("--") {
        args.remove(0);
    }
    if args.is_empty() {
        fail("usage: reference_worker [--concurrency N] -- HANDLER [ARGS...]");
    }
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| fail(&format!("{name} unset")));
    let pod = env("RUNPOD_POD_ID");
    let fill = |url: String| url.replace("$RUNPOD_POD_ID", &pod);
    let (host, take_path) = split_url(&fill(env("RUNPOD_WEBHOOK_GET_JOB")));
    let (_, done_path) = split_url(&fill(env("RUNPOD_WEBHOOK_POST_OUTPUT")));
    let take = format!(
        "GET {take_path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\n\r\n",
        env("RUNPOD_AI_API_KEY")
    );
    let slot = Slot {
        host,
        take_request: take.into_bytes(),
        done_path,
        key: env("RUNPOD_AI_API_KEY"),
        handler: args,
    };
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| slot.run());
        }
    });
}

/// What every slot's thread shares.
struct Slot {
    host: String,
    take_request: Vec<u8>,
    /// With `$ID` for the job id.
    done_path: String,
    key: String,
    handler: Vec<String>,
}

impl Slot {
    // The worker runs until it is killed; its handler then reads the end of
    // its stdin and exits, and init reaps it.
    #[expect(clippy::zombie_processes)]
    fn run(&self) {
        let mut child = Command::new(&self.handler[0])
            .args(&self.handler[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start the handler: {e}")));
        let mut to_handler: ChildStdin = child.stdin.take().expect("piped stdin");
        let mut from_handler = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut answer = Vec::new();
        read_line(&mut from_handler, &mut answer); // {"ready": true}

        let stream = TcpStream::connect(&self.host)
            .unwrap_or_else(|e| fail(&format!("cannot connect to {}: {e}", self.host)));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let mut writer = stream.try_clone().expect("clone the socket");
        let mut reader = BufReader::with_capacity(64 * 1024, stream);
        let mut body = Vec::new();
        let mut head = Vec::new();
        loop {
            writer.write_all(&self.take_request).expect("send a take");
            if read_response(&mut reader, &mut body) != 200 {
                continue;
            }
            body.push(b'\n');
            to_handler.write_all(&body).expect("write to the handler");
            read_line(&mut from_handler, &mut answer);
            let (id, rest) = split_id(&answer);
            let path = self.done_path.replace("$ID", id);
            head.clear();
            write!(
                head,
                "POST {path}&isStream=false HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
                self.host,
                self.key,
                rest.len() + 1
            )
            .expect("format the request head");
            // One write for a small result; a large one is not copied.
            if rest.len() <= 64 * 1024 {
                head.extend_from_slice(rest);
                writer.write_all(&head).expect("send a result");
            } else {
                writer.write_all(&head).expect("send a result");
                writer.write_all(rest).expect("send a result");
            }
            read_response(&mut reader, &mut body);
        }
    }
}

/// `http://HOST:PORT/PATH?QUERY` → (`HOST:PORT`, `/PATH?QUERY`).
fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| fail(&format!("not an http:// URL: {url}")));
    let slash = rest.find('/').unwrap_or(rest.len());
    (rest[..slash].to_owned(), rest[slash..].to_owned())
}

/// A handler answer `{"id":"ID",REST` → (`ID`, `REST` without its newline):
/// the answer must name its id first (whitespace allowed).
fn split_id(line: &[u8]) -> (&str, &[u8]) {
    fn skip_ws(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
        &b[n..]
    }
    let after = skip_ws(line)
        .strip_prefix(b"{")
        .map(skip_ws)
        .and_then(|b| b.strip_prefix(b"\"id\""))
        .map(skip_ws)
        .and_then(|b| b.strip_prefix(b":"))
        .map(skip_ws)
        .and_then(|b| b.strip_prefix(b"\""))
        .unwrap_or_else(|| fail("the handler's answer does not start with its id"));
    let quote = after
        .iter()
        .position(|&b| b == b'"')
        .unwrap_or_else(|| fail("unterminated id"));
    let id = std::str::from_utf8(&after[..quote]).unwrap_or_else(|_| fail("id not UTF-8"));
    let rest = skip_ws(&after[quote + 1..]);
    let mut rest = rest.strip_prefix(b",").unwrap_or(rest);
    while let [head @ .., b'\n' | b'\r'] = rest {
        rest = head;
    }
    (id, rest)
}

fn read_line(from: &mut BufReader<ChildStdout>, into: &mut Vec<u8>) {
    into.clear();
    if from.read_until(b'\n', into).expect("read from the handler") == 0 {
        fail("the handler closed its stdout");
    }
}

/// Reads one response into `body` and returns its status. Only
/// `Content-Length` bodies: the stand-in sends no chunked ones.
fn read_response(reader: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> u16 {
    let mut line = String::new();
    let mut status = 0;
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read a response") == 0 {
            fail("the server closed the connection");
        }
        if status == 0 {
            status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| fail(&format!("bad status line {line:?}")));
        } else if line == "\r\n" {
            break;
        } else if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    body.clear();
    body.resize(length, 0);
    reader.read_exact(body).expect("read a response body");
    status
}

fn fail(message: &str) -> ! {
    eprintln!("reference_worker: {message}");
    std::process::exit(1);
}
