//! A throwaway PostgreSQL cluster from the system's server programs
//! (`initdb`, `pg_ctl`; run as `postgres` when we are root, since PostgreSQL
//! refuses root): for `weft up` on a machine with no database, and for the
//! tests where no server answers. Stopped and deleted when dropped, and by a
//! watcher process should the owner die without dropping it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A server program is not installed.
    #[error(
        "{0} not found: install the PostgreSQL server (Debian: apt-get install postgresql; scripts/setup does it)"
    )]
    NotInstalled(String),
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Failed {
        /// What was being done.
        step: &'static str,
        /// What the program said.
        detail: String,
    },
    /// The file system or a process could not be used.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A running throwaway cluster on 127.0.0.1.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    pg_ctl: PathBuf,
    root: bool,
    port: u16,
    stopped: bool,
}

/// Finds a PostgreSQL server program: on PATH, else in Debian's versioned
/// directories (the newest version wins).
pub fn pg_binary(name: &str) -> Result<PathBuf, ClusterError> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin").join(name);
            bin.is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, path)| path)
        .ok_or_else(|| ClusterError::NotInstalled(name.to_owned()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server program, as `postgres` when we are root.
fn pg_command(program: &Path, root: bool) -> Command {
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(step: &'static str, command: &mut Command) -> Result<(), ClusterError> {
    let out = command.stdout(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Failed {
        step,
        detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

impl Cluster {
    /// Creates a cluster in a new temporary directory and starts it on a free
    /// port, trusting local connections as `postgres`.
    pub fn start() -> Result<Self, ClusterError> {
        let initdb = pg_binary("initdb")?;
        let pg_ctl = pg_binary("pg_ctl")?;
        let root = is_root();
        let dir = std::env::temp_dir().join(format!(
            "weft-pg-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir)?;
        if root {
            run(
                "chown of the cluster directory",
                Command::new("chown").arg("postgres:postgres").arg(&dir),
            )?;
        }
        let mut cluster = Self {
            dir,
            pg_ctl,
            root,
            port: 0,
            stopped: true,
        };
        let data = cluster.data();
        run(
            "initdb",
            pg_command(&initdb, root).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
        )?;
        cluster.port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=300",
            cluster.port,
            cluster.dir.display()
        );
        run(
            "pg_ctl start",
            pg_command(&cluster.pg_ctl, root)
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(cluster.dir.join("log"))
                .args(["-w", "-t", "60", "start"]),
        )?;
        cluster.stopped = false;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Connection settings for database `dbname` as `postgres`.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(dbname);
        config
    }

    /// The URL of database `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Starts a watcher process that stops the cluster and deletes it once
    /// this process has exited, however it exits (for clusters kept for the
    /// life of the process). The watcher waits for the end of a pipe whose
    /// other end only this process holds: the kernel closes it when the
    /// process exits, even by SIGKILL and before anyone reaps it (a process
    /// id, by contrast, answers `kill -0` while it is a zombie).
    pub fn watch_until_exit(&self) -> Result<(), ClusterError> {
        let stop = if self.root {
            format!("runuser -u postgres -- '{}'", self.pg_ctl.display())
        } else {
            format!("'{}'", self.pg_ctl.display())
        };
        let script = format!(
            "cat >/dev/null; \
             {stop} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            data = self.data().display(),
            dir = self.dir.display(),
        );
        let mut watcher = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Held open, never written, for the rest of this process's life
        // (the descriptor is close-on-exec, so no other child inherits it).
        if let Some(pipe) = watcher.stdin.take() {
            std::mem::forget(pipe);
        }
        Ok(())
    }

    /// Stops the cluster (`immediate`: its data is thrown away) and deletes
    /// its files.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if !self.stopped {
            run(
                "pg_ctl stop",
                pg_command(&self.pg_ctl, self.root)
                    .arg("-D")
                    .arg(self.data())
                    .args(["-m", "immediate", "stop"]),
            )?;
            self.stopped = true;
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "could not remove the PostgreSQL cluster in {}: {e}",
                self.dir.display()
            );
        }
    }
}
