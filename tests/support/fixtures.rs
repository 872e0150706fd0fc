//! The files the black-box tests hand to jobpipe: paths in the repository,
//! the fake handler and its job inputs, the example handlers (the C one
//! compiled once per test binary).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, as an absolute path string.
pub fn repo_path(relative: &str) -> String {
    repo().join(relative).to_string_lossy().into_owned()
}

/// The misbehaving handler used by most tests.
pub fn fake_handler() -> String {
    repo_path("tests/fixtures/fake_handler.py")
}

/// A test input that makes the fake handler do `what`, with extra input keys.
pub fn fake_job(what: &str, extra: Value) -> String {
    let mut input = serde_json::json!({ "do": what });
    if let Value::Object(extra) = extra {
        input.as_object_mut().unwrap().extend(extra);
    }
    serde_json::json!({ "input": input }).to_string()
}

/// The Python echo handler of handlers/python.
pub fn python_echo() -> Vec<String> {
    vec!["python3".into(), repo_path("handlers/python/echo.py")]
}

/// The C example handler, compiled with gcc once per test binary into the
/// target directory; returns the executable's path.
pub fn c_echo() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| compile_c("handlers/c/echo.c")).clone()
}

/// Compiles one C file of the repository with gcc. Each test binary builds
/// its own copy, named with its process id, so binaries running side by
/// side never execute a file another one is still writing.
pub fn compile_c(source: &str) -> String {
    let stem = Path::new(source).file_stem().unwrap().to_string_lossy();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-handlers");
    std::fs::create_dir_all(&dir).expect("create the C build directory");
    let out = dir.join(format!("{stem}-{}", std::process::id()));
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(repo_path(source))
        .status()
        .expect("gcc runs (a C compiler is needed for these tests)");
    assert!(status.success(), "gcc could not compile {source}");
    out.to_string_lossy().into_owned()
}
