//! Checks made once at start: that the handler program (and the
//! interpreter its `#!` line names) can be executed, that the machine's
//! limits allow the handlers asked for, and that jobpipe's own memory and
//! environment are closed to other processes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why the handler program (or `nvidia-smi`) cannot be run; each reads
/// after the program's name: "handler \"./h.sh\" is a directory, ...".
#[derive(Debug, thiserror::Error)]
pub enum ExecutableError {
    #[error("was not found on PATH")]
    NotOnPath,
    #[error("does not exist")]
    DoesNotExist,
    #[error("cannot be read: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("is a directory, not a program")]
    IsDirectory,
    #[error("is not executable (chmod +x {}, or run it through its interpreter)", path.display())]
    NotExecutable {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("has an empty #! line")]
    EmptyShebang,
    #[error("names the interpreter {interpreter} in its #! line, which does not exist; fix the #! line or install it")]
    MissingInterpreter { interpreter: String },
    /// `#!/usr/bin/env PROGRAM` with no PROGRAM on PATH.
    #[error("runs `{line}` in its #! line, but {program} was not found on PATH; fix the #! line or install {program}")]
    EnvProgramMissing { line: String, program: String },
}

/// Why the machine's limits do not allow the handlers asked for.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("--concurrency {handlers} is more than {MAX_HANDLERS} handler processes; run more workers instead")]
    TooMany { handlers: usize },
    #[error("--concurrency {handlers} needs about {wanted} open files but the limit (ulimit -n) is {limit}; lower --concurrency or raise the limit")]
    OpenFiles {
        handlers: usize,
        wanted: u64,
        limit: u64,
    },
    #[error("--concurrency {handlers} needs {handlers} more processes but this user runs {running} of at most {limit} (ulimit -u); lower --concurrency or raise the limit")]
    Processes {
        handlers: usize,
        running: u64,
        limit: u64,
    },
}

/// Finds the program the way `execvp` will and checks that it can be run,
/// so that a missing handler is reported at once, by name.
pub fn check_executable(program: &str) -> Result<PathBuf, ExecutableError> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut found_unusable = None;
    for candidate in candidates {
        match usable(&candidate) {
            Ok(()) => return check_interpreter(&candidate).map(|()| candidate),
            Err(Some(problem)) => found_unusable = Some(problem),
            Err(None) => {}
        }
    }
    Err(found_unusable.unwrap_or_else(|| {
        if program.contains('/') {
            ExecutableError::DoesNotExist
        } else {
            ExecutableError::NotOnPath
        }
    }))
}

/// Checks the interpreter a script names in its `#!` line, since a missing
/// one makes `exec` fail with a "no such file" that names the script.
fn check_interpreter(script: &Path) -> Result<(), ExecutableError> {
    let Some(line) = shebang(script) else {
        return Ok(());
    };
    let mut words = line.split_whitespace();
    let Some(interpreter) = words.next() else {
        return Err(ExecutableError::EmptyShebang);
    };
    if !Path::new(interpreter).exists() {
        return Err(ExecutableError::MissingInterpreter {
            interpreter: interpreter.to_owned(),
        });
    }
    let program = words.next().filter(|w| !w.starts_with('-'));
    if let (Some("env"), Some(program)) = (
        Path::new(interpreter).file_name().and_then(|n| n.to_str()),
        program,
    ) {
        if !program.contains('/') && check_executable_on_path(program).is_none() {
            return Err(ExecutableError::EnvProgramMissing {
                program: program.to_owned(),
                line,
            });
        }
    }
    Ok(())
}

/// The text after `#!` on the first line of a file, if it starts so.
fn shebang(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let mut file = std::fs::File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    let head = head[..n].strip_prefix(b"#!")?;
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    Some(String::from_utf8_lossy(&head[..end]).trim().to_owned())
}

fn check_executable_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| usable(candidate).is_ok())
}

/// `Err(None)`: nothing there; `Err(Some(why))`: there but unusable.
fn usable(path: &Path) -> Result<(), Option<ExecutableError>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(Some(ExecutableError::Unreadable(e))),
    };
    if meta.is_dir() {
        return Err(Some(ExecutableError::IsDirectory));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(|source| {
        Some(ExecutableError::NotExecutable {
            path: path.to_owned(),
            source,
        })
    })
}

/// Most handler processes one worker runs, whatever the machine allows.
pub const MAX_HANDLERS: usize = 1024;
/// File descriptors jobpipe holds for one handler process: its three pipes
/// and room for the three more a start or a restart holds for a moment.
const FDS_PER_HANDLER: u64 = 6;
/// File descriptors kept for jobpipe itself: connections, logs, the spool.
const FDS_RESERVED: u64 = 256;

/// Checks that `handlers` handler processes fit the machine's limits, after
/// raising the open-file limit to its hard limit; the error says which limit
/// is too low.
pub fn check_handler_limits(handlers: usize) -> Result<(), LimitError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    if handlers > MAX_HANDLERS {
        return Err(LimitError::TooMany { handlers });
    }
    let wanted = FDS_RESERVED + handlers as u64 * FDS_PER_HANDLER;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let mut files = soft;
        if soft < wanted && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            files = hard;
        }
        if files != RLIM_INFINITY && files < wanted {
            return Err(LimitError::OpenFiles {
                handlers,
                wanted,
                limit: files,
            });
        }
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NPROC) {
        let root = nix::unistd::getuid().is_root();
        if soft != RLIM_INFINITY && !root {
            let running = super::procfs::processes_of_this_user();
            if running + handlers as u64 > soft {
                return Err(LimitError::Processes {
                    handlers,
                    running,
                    limit: soft,
                });
            }
        }
    }
    Ok(())
}

/// Makes this process non-dumpable: no core dump, and its `/proc` files
/// (environment, memory) are readable only by a process with
/// `CAP_SYS_PTRACE`, not by every process of the same user such as a
/// handler. Handlers themselves are dumpable again after `exec`.
pub fn make_non_dumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot make jobpipe non-dumpable ({e}); processes of the same user can read its environment");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_handler_counts_are_refused() {
        let err = check_handler_limits(100_000).unwrap_err().to_string();
        assert!(err.contains("more than 1024"), "{err}");
        assert!(check_handler_limits(2).is_ok());
    }

    #[test]
    fn missing_and_non_executable_programs_are_named() {
        assert_eq!(
            check_executable("no-such-program-jobpipe")
                .unwrap_err()
                .to_string(),
            "was not found on PATH"
        );
        assert_eq!(
            check_executable("/no/such/file").unwrap_err().to_string(),
            "does not exist"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.sh");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let err = check_executable(file.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not executable"), "{err}");
        assert!(check_executable("sh").is_ok());
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, first_line: &str| {
            let file = dir.path().join(name);
            std::fs::write(&file, format!("{first_line}\necho hi\n")).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
            file.display().to_string()
        };
        let err = check_executable(&script("a", "#!/usr/bin/python9"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("interpreter /usr/bin/python9"), "{err}");
        let err = check_executable(&script("b", "#!/usr/bin/env python9 -u"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("python9 was not found on PATH"), "{err}");
        assert!(check_executable(&script("c", "#!/bin/sh")).is_ok());
        assert!(check_executable(&script("d", "#!/usr/bin/env -S sh -e")).is_ok());
    }
}
