//! Every example environment in config/*.env, loaded as its header says
//! (`set -a; . FILE; set +a` in bash) and run: its settings must be valid
//! and its handler must answer a job. The examples name files where an
//! image built as in docs/migrating-from-runpod.md holds them, under
//! `/app/`; the test lays out the same files in a temporary directory and
//! points `/app/` there.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::{jobpipe, repo, repo_path};

/// The files an example image holds under /app, and where they come from.
const APP: [(&str, &str); 5] = [
    ("handler.py", "handlers/python/echo.py"),
    ("jobpipe_handler.py", "handlers/python/jobpipe_handler.py"),
    ("async_echo.py", "handlers/python/async_echo.py"),
    ("jobpipe_runpod.py", "handlers/python/jobpipe_runpod.py"),
    ("echo.sh", "handlers/oneshot/echo.sh"),
];

/// The variables a file sets, as bash sees them after sourcing it.
fn load(file: &Path) -> BTreeMap<String, String> {
    let out = Command::new("env")
        .args([
            "-i",
            "PATH=/usr/bin:/bin",
            "bash",
            "-c",
            r#"set -a; . "$1"; set +a; env -0"#,
            "load",
        ])
        .arg(file)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{} does not load: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.starts_with("JOBPIPE_") || k.starts_with("RUNPOD_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn every_example_environment_runs_a_job() {
    let app = tempfile::tempdir().unwrap();
    for (name, source) in APP {
        let to = app.path().join(name);
        std::fs::copy(repo_path(source), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let app_dir = format!("{}/", app.path().display());
    let mut files: Vec<_> = std::fs::read_dir(repo().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "env"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "examples found: {files:?}");
    for file in files {
        let vars = load(&file);
        assert!(
            vars.contains_key("JOBPIPE_HANDLER"),
            "{}: {vars:?}",
            file.display()
        );
        let mut run = jobpipe().deadline(std::time::Duration::from_secs(60));
        for (name, value) in &vars {
            let value = match name.as_str() {
                "JOBPIPE_SPOOL_DIR" => app.path().join("spool").display().to_string(),
                _ => value.replace("/app/", &app_dir),
            };
            run = run.env(name, &value);
        }
        if !vars.contains_key("JOBPIPE_TEST_INPUT") {
            run = run.test_input(r#"{"input": {"name": "x"}}"#);
        }
        let run = run.run();
        run.expect_code(0);
        let output = run.output().to_string();
        assert!(
            output.contains(r#""name":"x""#),
            "{}: {output}\n{}",
            file.display(),
            run.describe()
        );
    }
}

/// Every test-job command the README and the docs show (a line starting
/// `jobpipe --test-input` or `--test_input`) runs verbatim from the
/// repository root and exits 0, so a reader can paste it.
#[test]
fn documented_test_job_commands_run_verbatim_from_the_repository_root() {
    let mut ran = 0;
    for doc in [
        "README.md",
        "docs/migrating-from-runpod.md",
        "docs/handler-protocol.md",
    ] {
        let text = std::fs::read_to_string(repo_path(doc)).unwrap();
        let commands = text.lines().map(str::trim).filter(|line| {
            line.starts_with("jobpipe --test-input") || line.starts_with("jobpipe --test_input")
        });
        for line in commands {
            let words = shlex::split(line).unwrap_or_else(|| panic!("{doc}: cannot split {line}"));
            let run = jobpipe().args(&words[1..]).cwd(&repo()).run();
            assert_eq!(run.code, Some(0), "{doc}: {line}\n{}", run.describe());
            run.output(); // asserts the job COMPLETED
            ran += 1;
        }
    }
    assert!(ran >= 4, "only {ran} documented commands found");
}
