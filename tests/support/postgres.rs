//! A real PostgreSQL server for tests, started from the installed server
//! binaries so no shared service is needed.
//!
//! One server per test binary is started on first use: `initdb` into a
//! temporary directory, a free port on 127.0.0.1, its socket in the same
//! directory, durability switched off for speed. Each test gets its own
//! database ([`database`]), dropped when the guard is dropped (also when the
//! test panics); the server is stopped and its directory removed when the
//! test process exits. `initdb` refuses to run as root, so as root the
//! binaries run as the `postgres` user (`runuser`), and the directory is
//! handed to that user.
//!
//! Where no server binaries exist the tests fail, unless the user opted
//! out with `JOBPIPE_TEST_SKIP=postgres` (see [`super::prereq`]).
//! `JOBPIPE_PG_BIN` names the directory holding `initdb` and `pg_ctl` when
//! they are elsewhere.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tempfile::TempDir;

/// The superuser the tests connect as.
pub const SUPERUSER: &str = "postgres";

/// Settings for a throw-away server: no durability, room for many workers.
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
log_min_messages = warning
";

/// A running PostgreSQL server in a temporary directory.
pub struct PgServer {
    bin: PathBuf,
    dir: Mutex<Option<TempDir>>,
    socket_dir: PathBuf,
    data: PathBuf,
    pub port: u16,
    /// The superuser's password, needed over TCP (the socket trusts).
    pub password: String,
    run_as_postgres: bool,
    stopped: AtomicBool,
}

/// The server shared by every test of this binary, started on first use;
/// `None` when no server binaries are installed and the user opted out of
/// PostgreSQL (`JOBPIPE_TEST_SKIP=postgres`): without the opt-out the test
/// fails.
pub fn server() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let bin = find_bin()?;
        let server = PgServer::start(bin).unwrap_or_else(|e| panic!("{e}"));
        extern "C" fn stop_shared() {
            if let Some(Ok(server)) = SERVER.get() {
                server.stop();
            }
        }
        // SAFETY: registers a plain function with no arguments; it runs
        // once at process exit, when the tests have finished.
        unsafe { nix::libc::atexit(stop_shared) };
        Ok(server)
    });
    match server {
        Ok(server) => Some(server),
        Err(why) => {
            super::prereq::missing(
                "postgres",
                &format!("{why} (install PostgreSQL's server, e.g. apt-get install postgresql, or set JOBPIPE_PG_BIN)"),
            );
            None
        }
    }
}

/// A server of the caller's own, for a test that restarts or stops it:
/// its commits are acknowledged only once written to the operating system
/// (`synchronous_commit = on`), so a crash of the server (`pg_ctl -m
/// immediate`) loses nothing acknowledged, as on a real deployment (the
/// machine itself does not crash in a test, so `fsync` stays off).
/// `None` when the tests skip PostgreSQL.
pub fn own_server() -> Option<OwnServer> {
    own_server_with("")
}

/// [`own_server`] with `settings` added to its configuration.
pub fn own_server_with(settings: &str) -> Option<OwnServer> {
    let bin = match find_bin() {
        Ok(bin) => bin,
        Err(why) => {
            super::prereq::missing("postgres", &why);
            return None;
        }
    };
    let settings = format!("synchronous_commit = on\n{settings}");
    let server = PgServer::start_with(bin, &settings).unwrap_or_else(|e| panic!("{e}"));
    Some(OwnServer(Box::leak(Box::new(server))))
}

/// A server of one test's own, stopped and removed when dropped.
pub struct OwnServer(pub &'static PgServer);

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl std::ops::Deref for OwnServer {
    type Target = PgServer;
    fn deref(&self) -> &PgServer {
        self.0
    }
}

/// A fresh database on the shared server, or `None` when the tests skip.
pub fn database() -> Option<TestDb> {
    server().map(PgServer::create_database)
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> Result<PathBuf, String> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("JOBPIPE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has_tools(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "JOBPIPE_PG_BIN={} holds no initdb and pg_ctl",
                dir.display()
            ))
        };
    }
    // Debian and Ubuntu keep the server binaries per major version, off PATH.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .filter_map(|dir| std::fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| has_tools(dir))
        .ok_or_else(|| "no PostgreSQL server binaries (initdb, pg_ctl) were found".into())
}

impl PgServer {
    /// Initialises and starts a server; retries on another port if the
    /// free port found was taken in between.
    pub fn start(bin: PathBuf) -> Result<PgServer, String> {
        Self::start_with(bin, "")
    }

    /// [`Self::start`] with `settings` added to the configuration.
    pub fn start_with(bin: PathBuf, settings: &str) -> Result<PgServer, String> {
        let run_as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("jobpipe-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let password = uuid::Uuid::new_v4().simple().to_string();
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, &password).map_err(|e| e.to_string())?;
        if run_as_postgres {
            let user = nix::unistd::User::from_name(SUPERUSER)
                .ok()
                .flatten()
                .ok_or("running as root, but there is no \"postgres\" user to run the server as")?;
            for path in [dir.path(), &pwfile] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .map_err(|e| format!("cannot hand {} to postgres: {e}", path.display()))?;
            }
        }
        let mut server = PgServer {
            bin,
            socket_dir: dir.path().to_path_buf(),
            data: dir.path().join("data"),
            dir: Mutex::new(Some(dir)),
            port: 0,
            password,
            run_as_postgres,
            stopped: AtomicBool::new(false),
        };
        server.run_tool(
            "initdb",
            &[
                "-D".as_ref(),
                server.data.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-locale".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let conf = server.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        text.push_str(SETTINGS);
        text.push_str(settings);
        text.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            server.socket_dir.display()
        ));
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;

        let mut last_error = String::new();
        for _ in 0..3 {
            server.port = free_port();
            let port = format!("-p {}", server.port);
            let log = server.socket_dir.join("server.log");
            let started = server.run_tool(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    server.data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-o".as_ref(),
                    port.as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "120".as_ref(),
                    "start".as_ref(),
                ],
            );
            match started {
                Ok(_) => return Ok(server),
                Err(e) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last_error = format!("{e}\nserver log:\n{log}");
                }
            }
        }
        Err(format!("PostgreSQL did not start: {last_error}"))
    }

    /// Runs one of the server's tools, as `postgres` when we are root.
    fn run_tool(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
        let program = self.bin.join(tool);
        let mut command = if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", SUPERUSER, "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        // The tools must not pick up a developer's own connection settings.
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGDATA",
        ] {
            command.env_remove(var);
        }
        let mut child = command
            .args(args)
            .current_dir(&self.socket_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdout = String::new();
        let _ = child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout);
        let stderr = errors.join().unwrap_or_default();
        // A test process that runs jobpipe in-process has its reaper, which
        // may collect the tool's exit status first (ECHILD here); the
        // tool has run to its end by then, so judge it by what it said.
        match child.wait() {
            Ok(status) if !status.success() => {
                Err(format!("{tool} failed ({status}): {stdout}{stderr}"))
            }
            Ok(_) => Ok(stdout),
            Err(e) if e.raw_os_error() == Some(nix::libc::ECHILD) => Ok(stdout),
            Err(e) => Err(format!("{tool}: {e}")),
        }
    }

    /// Runs SQL as the superuser and returns its rows as `psql -A -t`
    /// prints them (columns joined by `|`, one row a line, NULL empty);
    /// panics with the server's message on error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Over a connection of its own on a thread of its own, so that it
    /// works from synchronous and asynchronous tests alike and starts no
    /// child process (which an in-process jobpipe's reaper could collect).
    fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let (url, sql) = (self.url(database), sql.to_owned());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                let messages = client.simple_query(&sql).await.map_err(|e| {
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |db| db.message().to_owned())
                })?;
                let rows: Vec<String> = messages
                    .iter()
                    .filter_map(|message| match message {
                        tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                            (0..row.len())
                                .map(|i| row.get(i).unwrap_or_default())
                                .collect::<Vec<_>>()
                                .join("|"),
                        ),
                        _ => None,
                    })
                    .collect();
                Ok(rows.join("\n"))
            })
        })
        .join()
        .map_err(|_| "the SQL thread panicked".to_string())?
    }

    /// Creates an empty database with a name unique to this process.
    pub fn create_database(&'static self) -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { server: self, name }
    }

    /// The server's main process (the postmaster), whose children are
    /// its backends and workers.
    pub fn postmaster_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The path of one of the server's programs (`pgbench`, say).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A connection URL for `database` with the superuser's password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Crashes the server (`pg_ctl restart -m immediate`: every backend is
    /// killed, crash recovery runs at start) and waits until it answers.
    pub fn restart_immediate(&self) {
        let log = self.socket_dir.join("server.log");
        let port = format!("-p {}", self.port);
        self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                port.as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "120".as_ref(),
                "restart".as_ref(),
            ],
        )
        .unwrap_or_else(|e| panic!("pg_ctl restart: {e}"));
    }

    /// Ends every client connection but the one asking; how many it ended.
    pub fn terminate_backends(&self) -> usize {
        self.psql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .parse()
        .unwrap()
    }

    /// Stops the server at once and removes its directory; idempotent.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let stopped = self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        if let Err(e) = stopped {
            eprintln!("could not stop the test PostgreSQL server: {e}");
        }
        drop(self.dir.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A database of its own for one test; dropped with the guard.
pub struct TestDb {
    pub server: &'static PgServer,
    pub name: String,
}

impl TestDb {
    /// The URL a jobpipe process is given, password included.
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }

    /// The URL, keeping the database until the server is removed at exit
    /// (for a test that hands the URL to code that outlives the guard).
    pub fn keep(self) -> String {
        let url = self.url();
        std::mem::forget(self);
        url
    }

    /// Runs SQL in this database as the superuser (see [`PgServer::psql`]).
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.server.stopped.load(Ordering::SeqCst) {
            return;
        }
        // WITH (FORCE) ends any connection a test left open.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = self.server.try_psql("postgres", &sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port on 127.0.0.1")
}
