//! A private PostgreSQL server for one test: `initdb` into a temporary directory, `postgres` on
//! a free loopback port, trust authentication (loopback only), stopped when dropped. Needs
//! Debian's `postgresql` package (scripts/install-deps.sh installs it). PostgreSQL refuses to
//! run as root: as root, the server runs as the `postgres` user the package creates.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

pub struct Postgres {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's bin directory.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql); run scripts/install-deps.sh")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL version with initdb under /usr/lib/postgresql")
        .1
}

impl Postgres {
    /// A server for tests: `fsync` off (its durability is not under test, and it is faster).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server with `fsync` on, as an operator would run it: for benchmarks.
    #[allow(dead_code)]
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(fsync: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let as_user = |cmd: &mut Command| {
            if nix::unistd::Uid::effective().is_root() {
                let user = nix::unistd::User::from_name("postgres").unwrap().expect(
                    "running as root needs the postgres user (Debian's postgresql package)",
                );
                std::os::unix::fs::chown(
                    dir.path(),
                    Some(user.uid.as_raw()),
                    Some(user.gid.as_raw()),
                )
                .unwrap();
                cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            }
        };
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "coffer",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir(dir.path());
        as_user(&mut initdb);
        let out = initdb.output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port can be taken by another test's server between our probe and our bind:
        // then ours exits, and a TCP connect would reach the other one. So a server counts as
        // started only when its own Unix socket (in our directory) exists, and a server that
        // exited is started again on another port.
        for _ in 0..5 {
            let port = coffer_free_port();
            let mut server = Command::new(bin.join("postgres"));
            server
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-p",
                    &port.to_string(),
                    "-k",
                    dir.path().to_str().unwrap(),
                ])
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    if fsync { "fsync=on" } else { "fsync=off" },
                    "-c",
                    "max_connections=100",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .current_dir(dir.path());
            as_user(&mut server);
            let mut child = server.spawn().unwrap();
            let socket = dir.path().join(format!(".s.PGSQL.{port}"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // its port was taken: try another
                }
                if socket.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "PostgreSQL did not listen on port {port} within 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("PostgreSQL did not start on any of 5 free ports");
    }

    /// A URL of database `db` (create it first with [`create_database`](Self::create_database)).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://coffer@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        use sqlx::Connection;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = loop {
            match sqlx::PgConnection::connect(&self.url("postgres")).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot connect to the test PostgreSQL: {e}"),
            }
        };
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        self.url(name)
    }
}

fn coffer_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGTERM: a "smart" shutdown would wait for clients; SIGINT is PostgreSQL's fast one.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
