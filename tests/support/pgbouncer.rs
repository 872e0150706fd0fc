//! A real PgBouncer (Debian's `pgbouncer` package, which `./test`
//! installs) in transaction mode in front of a test PostgreSQL database, on
//! a free port, stopped when dropped. Consecutive statements of one client
//! outside a transaction may then run on different server connections, so
//! whatever jobpipe keeps per connection (a named prepared statement, a
//! `LISTEN`) is exposed.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::postgres::TestDb;

/// A running PgBouncer.
pub struct Bouncer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    password: String,
    database: String,
}

impl Bouncer {
    /// The URL of the database through PgBouncer.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{}",
            self.password, self.port, self.database
        )
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// PgBouncer in transaction mode for `db`, keeping at most `pool_size`
/// server connections; `None` when the tests skip PostgreSQL.
pub fn start(db: &TestDb, pool_size: usize) -> Option<Bouncer> {
    let Some(program) = binary() else {
        super::prereq::missing(
            "postgres",
            "PgBouncer is not installed (Debian's pgbouncer package)",
        );
        return None;
    };
    let server = db.server;
    let dir = tempfile::Builder::new()
        .prefix("jobpipe-pgbouncer-")
        .tempdir()
        .unwrap();
    let port = super::endpoint::free_port();
    std::fs::write(
        dir.path().join("users.txt"),
        format!("\"postgres\" \"{}\"\n", server.password),
    )
    .unwrap();
    let config = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &config,
        format!(
            "[databases]\n{name} = host=127.0.0.1 port={pg_port} dbname={name}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {dir}/users.txt\n\
             pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n",
            name = db.name,
            pg_port = server.port,
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    // PgBouncer refuses to run as root.
    let mut command = if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user (from the PostgreSQL packages)");
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .unwrap();
        }
        std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .unwrap();
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid",
                "postgres",
                "--regid",
                "postgres",
                "--init-groups",
            ])
            .arg(&program);
        command
    } else {
        Command::new(&program)
    };
    let child = command
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer starts");
    let bouncer = Bouncer {
        child,
        port,
        dir,
        password: server.password.clone(),
        database: db.name.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "PgBouncer did not listen within 30 s:\n{}",
            bouncer.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(bouncer)
}
