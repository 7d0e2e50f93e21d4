//! `weft up` driven as a user drives it: started as a process in a home
//! directory of the test's, its output read line by line, Ctrl-C sent as a
//! terminal sends it, and what it leaves behind read from /proc and the
//! file system (so no procps is needed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::binary;

/// `weft` with `args`, pointed at the mesh of the `weft up` in `home`, not
/// yet started.
pub fn weft_command(home: &Path, args: &[&str]) -> Result<Command> {
    let mut command = Command::new(binary("weft")?);
    command
        .args(args)
        .arg("--certs")
        .arg(home.join("certs"))
        .arg("--discovery")
        .arg(format!("local://{}", home.join("discovery").display()));
    Ok(command)
}

/// `weft` with `args`, pointed at the mesh of the `weft up` in `home`, run
/// to its end.
pub fn weft(home: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(weft_command(home, args)?.output()?)
}

/// `weft` with `args` and `--home` (logs, kill, restart), nothing else.
pub fn weft_home(home: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(binary("weft")?)
        .args(args)
        .arg("--home")
        .arg(home)
        .output()?)
}

/// Sends `signal` (`INT`, `KILL`, …) to `pid` through the shell's own
/// `kill`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// The processes (pid, command line) whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    processes()
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmd.contains(needle).then_some((pid, cmd))
        })
        .collect()
}

/// The processes started with `name=value` in their environment (how the
/// instances of one `weft up` are told apart: `WEFT_SUPERVISOR_PID`).
pub fn processes_with_env(name: &str, value: &str) -> Vec<u32> {
    let wanted = format!("{name}={value}");
    processes()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|raw| raw.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Whether `pid` is a zombie (ended, not yet waited for).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn processes() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The throwaway clusters `weft up` process `pid` has in the temporary
/// directory.
pub fn cluster_dirs(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("weft-pg-{pid}-")))
        })
        .collect()
}

/// The instance records in the discovery directory of `home`.
pub fn instance_records(home: &Path) -> usize {
    let Ok(services) = std::fs::read_dir(home.join("discovery")) else {
        return 0;
    };
    services
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "instance"))
        .count()
}

/// `weft up` running in `home`, and its output (stdout and stderr) line by
/// line. Killed if the test ends without stopping it.
#[derive(Debug)]
pub struct Up {
    /// The process.
    pub child: Child,
    /// Its id.
    pub pid: u32,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Up {
    /// Starts it with the status table every `every` seconds, no database
    /// given (so it makes a throwaway cluster), and `extra` arguments.
    pub fn start(home: &Path, every: &str, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary("weft")?)
            .args(["up", "--every", every, "--home"])
            .arg(home)
            .args(extra)
            .env_remove("DATABASE_URL")
            .env_remove("WEFT_DISCOVERY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel::<String>();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().context("stdout")?);
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().context("stderr")?);
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Ok(Self {
            pid: child.id(),
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// The next line, waiting at most until `until`.
    pub fn next(&mut self, until: Instant) -> Option<String> {
        let line = self
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads lines until one contains `needle` (returned), failing with what
    /// was seen after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_until(timeout, |l| l.contains(needle))
            .with_context(|| format!("waiting for {needle:?}"))
    }

    /// Reads lines until one satisfies `wanted` (returned), failing with
    /// what was seen after `timeout`.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while let Some(line) = self.next(deadline) {
            if wanted(&line) {
                return Ok(line);
            }
        }
        bail!(
            "weft up did not print the line within {timeout:?}; it printed:\n{}",
            self.seen.join("\n")
        )
    }

    /// Sends Ctrl-C and waits (at most `timeout`) for it to exit, reading
    /// what it prints meanwhile.
    pub fn interrupt(&mut self, timeout: Duration) -> Result<ExitStatus> {
        signal(self.pid, "INT")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("weft up did not stop: {:#?}", self.seen);
            }
            let _ = self.next(Instant::now() + Duration::from_millis(100));
        };
        while self
            .next(Instant::now() + Duration::from_millis(200))
            .is_some()
        {}
        Ok(status)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `check` holds, failing with `what` after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("{what} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
