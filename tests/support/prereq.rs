//! Prerequisites a test cannot run without (a PostgreSQL server, the
//! runpod package, a PID namespace, a browser), and what happens when one
//! is missing.
//!
//! A missing prerequisite fails the test, so a machine that lacks it never
//! reports a pass for what it did not run. A user who cannot have one opts
//! out by naming it in `JOBPIPE_TEST_SKIP` (comma separated: `postgres`,
//! `runpod`, `unshare`, `container`, `browser`); the test then returns early, says so
//! on stderr, and appends a line to the file named by
//! `JOBPIPE_TEST_SKIP_LOG`, from which `./test` counts it as skipped rather
//! than passed.

use std::io::Write;

/// The variable that lists the prerequisites a user opted out of.
pub const SKIP_VAR: &str = "JOBPIPE_TEST_SKIP";

/// Whether the user opted out of the prerequisite `what`.
pub fn opted_out(what: &str) -> bool {
    std::env::var(SKIP_VAR)
        .unwrap_or_default()
        .split(',')
        .any(|name| name.trim() == what)
}

/// The prerequisite `what` is missing, for `why`: panics (the test fails)
/// unless the user opted out of it, and records the skip otherwise. The
/// caller returns from the test after this.
#[track_caller]
pub fn missing(what: &str, why: &str) {
    if !opted_out(what) {
        panic!(
            "this test needs {what} but {why}; `./test` installs it, or set \
             {SKIP_VAR}={what} to skip (reported as skipped, not passed)"
        );
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    eprintln!("SKIPPED ({SKIP_VAR}={what}): {binary} {test}: {why}");
    if let Some(log) = std::env::var_os("JOBPIPE_TEST_SKIP_LOG") {
        let line = format!("{binary} {test}\t{what}\t{}\n", why.replace('\n', " "));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .expect("the skip log named by JOBPIPE_TEST_SKIP_LOG can be written");
    }
}

/// moto's S3 server program from the tests' virtualenv, or `None` when
/// it cannot be had and the user opted out (`JOBPIPE_TEST_SKIP=s3`).
pub fn moto_server() -> Option<String> {
    let python = venv_python_or_why().ok();
    let program = python
        .map(|python| std::path::Path::new(&python).with_file_name("moto_server"))
        .filter(|path| path.is_file());
    match program {
        Some(path) => Some(path.display().to_string()),
        None => {
            missing(
                "s3",
                "moto's server (moto_server) is not in the virtualenv .ci/python-venv makes",
            );
            None
        }
    }
}

/// The virtualenv's python with the official runpod package (made once by
/// `.ci/python-venv`), or `None` when it cannot be made and the user opted
/// out of it (`JOBPIPE_TEST_SKIP=runpod`).
pub fn venv_python() -> Option<String> {
    match venv_python_or_why() {
        Ok(python) => Some(python),
        Err(why) => {
            missing("runpod", &why);
            None
        }
    }
}

/// The virtualenv's python, made once, or why it cannot be made.
fn venv_python_or_why() -> Result<String, String> {
    static PYTHON: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let made = PYTHON.get_or_init(|| {
        let script = format!("{}/.ci/python-venv", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("{script} cannot be run: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().last() {
            Some(python) if out.status.success() => Ok(python.trim().to_owned()),
            _ => Err(format!(
                "the virtualenv with the runpod package cannot be made ({script} failed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    });
    made.clone()
}
