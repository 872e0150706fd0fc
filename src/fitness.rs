//! Fitness checks: what must hold on this machine before the worker takes
//! its first job.
//!
//! A worker on a broken machine (a full disk, no GPU, a missing model file,
//! a backend that does not answer) would take jobs only to fail every one.
//! These checks run once at start-up, before any handler starts; the first
//! that fails ends the worker with [`crate::error::exit::UNFIT`] and a line
//! naming the check and what it found, so the platform can replace the
//! machine and an operator knows why.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::error::ConfigError;
use crate::os::{self, ExitStatus, SpawnSpec};

/// The checks to run before the first job.
#[derive(clap::Args)]
pub struct FitnessArgs {
    /// Fitness check before the first job: the file system holding PATH has
    /// SIZE free, e.g. /tmp:10GB. Repeatable (comma-separated in the
    /// variable). A failed check exits with code 8.
    #[arg(
        long,
        env = "JOBPIPE_REQUIRE_FREE_DISK",
        value_name = "PATH:SIZE",
        value_delimiter = ','
    )]
    pub require_free_disk: Vec<String>,

    /// Fitness check before the first job: at least SIZE of memory available
    /// (MemAvailable in /proc/meminfo).
    #[arg(long, env = "JOBPIPE_REQUIRE_MEMORY", value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub require_memory: Option<usize>,

    /// Fitness check before the first job: PATH exists (a model file, a
    /// mounted volume). Repeatable (comma-separated in the variable).
    #[arg(
        long,
        env = "JOBPIPE_REQUIRE_FILE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub require_file: Vec<PathBuf>,

    /// Fitness check before the first job: `nvidia-smi -L` lists a GPU.
    #[arg(long, env = "JOBPIPE_REQUIRE_GPU", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_gpu: bool,

    /// Fitness check before the first job: COMMAND exits 0 within
    /// --startup-timeout. Split into words like a shell would, run without
    /// one. Repeatable (one command in the variable).
    #[arg(long, env = "JOBPIPE_FITNESS_CHECK", value_name = "COMMAND")]
    pub fitness_check: Vec<String>,
}

impl FitnessArgs {
    /// The checks, validated, in the order they run.
    pub fn into_checks(self) -> Result<Vec<Check>, ConfigError> {
        let mut checks = Vec::new();
        for text in &self.require_free_disk {
            checks.push(Check::free_disk(text)?);
        }
        if let Some(min) = self.require_memory {
            checks.push(Check::Memory { min: min as u64 });
        }
        checks.extend(self.require_file.into_iter().map(Check::File));
        if self.require_gpu {
            checks.push(Check::Gpu);
        }
        for line in &self.fitness_check {
            checks.push(Check::command(line)?);
        }
        Ok(checks)
    }
}

/// A failed check, naming it: "--require-gpu failed: ...".
#[derive(Debug, thiserror::Error)]
#[error("{check} failed: {cause}")]
pub struct FitnessError {
    /// The check as [`Check::name`] writes it.
    pub check: String,
    #[source]
    pub cause: CheckError,
}

/// Why one check does not hold; each reads as the rest of the line after
/// "CHECK failed: ".
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("only {} {what}, less than the {} required", ByteSize(*.found), ByteSize(*.min))]
    TooLittle { found: u64, what: String, min: u64 },
    #[error("cannot read the free space of {}: {source}", path.display())]
    FreeSpace {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read /proc/meminfo: {0}")]
    MemInfo(#[source] std::io::Error),
    #[error("/proc/meminfo has no MemAvailable line")]
    NoMemAvailable,
    #[error("{}: {source}", path.display())]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nvidia-smi {0}; this machine shows no NVIDIA GPU driver")]
    NoDriver(#[source] os::ExecutableError),
    #[error("nvidia-smi -L {status}{}", quote_output(.output))]
    SmiFailed { status: ExitStatus, output: String },
    #[error("nvidia-smi -L lists no GPU{}", quote_output(.output))]
    NoGpu { output: String },
    /// A `--fitness-check` command that exited other than 0; `output` is the
    /// tail of what it printed.
    #[error("{status}{}", quote_output(.output))]
    CommandFailed { status: ExitStatus, output: String },
    #[error("cannot execute {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("still running after {} (--startup-timeout); killed", humantime::format_duration(*.0))]
    StillRunning(Duration),
    #[error("its exit status was lost")]
    StatusLost(#[source] tokio::sync::oneshot::error::RecvError),
}

/// How much of a failing command's output its report quotes.
const OUTPUT_TAIL: usize = 2000;
/// How long a command's output may still arrive after it exited.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(500);

/// One thing that must hold before the first job.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// `--require-free-disk PATH:SIZE`: the file system holding `path` has
    /// at least `min` bytes available.
    FreeDisk { path: PathBuf, min: u64 },
    /// `--require-memory SIZE`: at least `min` bytes of memory available.
    Memory { min: u64 },
    /// `--require-file PATH`: the path exists.
    File(PathBuf),
    /// `--require-gpu`: `nvidia-smi -L` lists at least one GPU.
    Gpu,
    /// `--fitness-check CMD`: the command exits 0.
    Command(Vec<String>),
}

impl Check {
    /// Reads `PATH:SIZE`; the size follows the last colon.
    pub fn free_disk(text: &str) -> Result<Check, ConfigError> {
        let invalid = |why: String| {
            ConfigError::Invalid(format!(
                "--require-free-disk {text:?}: {why}; write it as PATH:SIZE, e.g. /tmp:10GB"
            ))
        };
        let (path, size) = text
            .rsplit_once(':')
            .ok_or_else(|| invalid("no size".into()))?;
        if path.is_empty() {
            return Err(invalid("no path".into()));
        }
        let size: ByteSize = size
            .trim()
            .parse::<ByteSize>()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Check::FreeDisk {
            path: path.into(),
            min: size.as_u64(),
        })
    }

    /// Reads a `--fitness-check` command line, split like a shell would.
    pub fn command(line: &str) -> Result<Check, ConfigError> {
        match shlex::split(line) {
            Some(argv) if !argv.is_empty() => Ok(Check::Command(argv)),
            _ => Err(ConfigError::Invalid(format!(
                "--fitness-check {line:?} is empty or has unbalanced quotes"
            ))),
        }
    }

    /// How the check reads in log lines and failure reports.
    pub fn name(&self) -> String {
        match self {
            Check::FreeDisk { path, min } => {
                format!("--require-free-disk {}:{}", path.display(), ByteSize(*min))
            }
            Check::Memory { min } => format!("--require-memory {}", ByteSize(*min)),
            Check::File(path) => format!("--require-file {}", path.display()),
            Check::Gpu => "--require-gpu".into(),
            Check::Command(argv) => format!(
                "--fitness-check {}",
                shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
            ),
        }
    }

    /// Runs the check: what was found when it holds, or why it does not.
    /// Commands get `limit` to finish.
    pub async fn run(&self, limit: Duration) -> Result<String, CheckError> {
        match self {
            Check::FreeDisk { path, min } => {
                let free = free_disk(path).map_err(|source| CheckError::FreeSpace {
                    path: path.clone(),
                    source,
                })?;
                at_least(free, *min, &format!("free on {}", path.display()))
            }
            Check::Memory { min } => {
                let free = available_memory()?;
                at_least(free, *min, "of memory available")
            }
            Check::File(path) => match std::fs::metadata(path) {
                Ok(_) => Ok(format!("{} exists", path.display())),
                Err(source) => Err(CheckError::Missing {
                    path: path.clone(),
                    source,
                }),
            },
            Check::Gpu => gpu(limit).await,
            Check::Command(argv) => {
                let (status, output) = run_command(argv, limit).await?;
                if status == ExitStatus::Code(0) {
                    Ok("exited 0".into())
                } else {
                    Err(CheckError::CommandFailed { status, output })
                }
            }
        }
    }
}

/// Runs every check in order and stops at the first failure, which it
/// returns naming the check.
pub async fn check_all(checks: &[Check], limit: Duration) -> Result<(), FitnessError> {
    for check in checks {
        let name = check.name();
        match check.run(limit).await {
            Ok(found) => tracing::info!("fitness check passed: {name} ({found})"),
            Err(cause) => return Err(FitnessError { check: name, cause }),
        }
    }
    Ok(())
}

fn at_least(found: u64, min: u64, what: &str) -> Result<String, CheckError> {
    if found >= min {
        Ok(format!("{} {what}", ByteSize(found)))
    } else {
        Err(CheckError::TooLittle {
            found,
            what: what.to_owned(),
            min,
        })
    }
}

fn free_disk(path: &std::path::Path) -> nix::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    Ok(stats.blocks_available() as u64 * stats.fragment_size() as u64)
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn available_memory() -> Result<u64, CheckError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(CheckError::MemInfo)?;
    text.lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or(CheckError::NoMemAvailable)
}

async fn gpu(limit: Duration) -> Result<String, CheckError> {
    let smi = os::check_executable("nvidia-smi").map_err(CheckError::NoDriver)?;
    let argv = [smi.to_string_lossy().into_owned(), "-L".to_owned()];
    let (status, output) = run_command(&argv, limit).await?;
    if status != ExitStatus::Code(0) {
        return Err(CheckError::SmiFailed { status, output });
    }
    let gpus: Vec<&str> = output.lines().filter(|l| l.starts_with("GPU ")).collect();
    match gpus.len() {
        0 => Err(CheckError::NoGpu { output }),
        n => Ok(format!("{n} GPU(s): {}", gpus.join("; "))),
    }
}

/// Runs a command without a shell, in its own process group, and returns
/// its exit status and the tail of its stdout and stderr. A command still
/// running after `limit` is killed with its group; so is anything it left
/// behind once it exits, since a check must not leave processes around.
async fn run_command(argv: &[String], limit: Duration) -> Result<(ExitStatus, String), CheckError> {
    let spawned = os::spawn(&SpawnSpec {
        argv,
        env_remove: os::SECRETS,
        env_add: &[],
    })
    .map_err(|source| CheckError::Spawn {
        program: argv[0].clone(),
        source,
    })?;
    drop(spawned.stdin);
    let pid = spawned.pid;
    let stdout = tokio::spawn(read_tail(OwnedFd::from(spawned.stdout)));
    let stderr = tokio::spawn(read_tail(OwnedFd::from(spawned.stderr)));
    let exited = tokio::time::timeout(limit, spawned.exit).await;
    os::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let Ok(status) = exited else {
        return Err(CheckError::StillRunning(limit));
    };
    let status = status.map_err(CheckError::StatusLost)?;
    let output = tokio::time::timeout(OUTPUT_AFTER_EXIT, async {
        let out = stdout.await.unwrap_or_default();
        let err = stderr.await.unwrap_or_default();
        format!("{out}{err}")
    })
    .await
    .unwrap_or_default();
    Ok((status, output))
}

/// Reads a pipe to its end, keeping the last [`OUTPUT_TAIL`] bytes.
async fn read_tail(fd: OwnedFd) -> String {
    let Ok(mut pipe) = pipe::Receiver::from_owned_fd(fd) else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            kept.drain(..kept.len() - OUTPUT_TAIL);
        }
    }
    let start = kept.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}

fn quote_output(output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        String::new()
    } else {
        format!("; it printed: {output}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_disk_reads_path_and_size() {
        assert_eq!(
            Check::free_disk("/data:10GB").unwrap(),
            Check::FreeDisk {
                path: "/data".into(),
                min: 10_000_000_000
            }
        );
        assert!(Check::free_disk("/data").is_err());
        assert!(Check::free_disk(":1GB").is_err());
        assert!(Check::free_disk("/data:lots").is_err());
    }

    #[tokio::test]
    async fn memory_and_disk_are_measured() {
        let found = Check::Memory { min: 1 }
            .run(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(found.contains("of memory available"), "{found}");
        let why = Check::FreeDisk {
            path: "/".into(),
            min: u64::MAX,
        }
        .run(Duration::from_secs(5))
        .await
        .unwrap_err();
        assert!(why.to_string().contains("less than"), "{why}");
    }
}
