//! `weft up` driven as a user would: start it with nothing but the
//! PostgreSQL server programs (no database given: it makes a throwaway
//! cluster), wait until it says it is ready, run the grpcurl command it
//! printed and a `weft call`, `weft ls` and `weft health`, press Ctrl-C, and
//! check that nothing is left running or registered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft_tests::process::binary;
use weft_tests::tools::tool;

fn weft(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary("weft").unwrap())
        .args(args)
        .arg("--certs")
        .arg(home.join("certs"))
        .arg("--discovery")
        .arg(format!("local://{}", home.join("discovery").display()))
        .output()
        .unwrap()
}

/// Ctrl-C, as a terminal sends it (SIGINT through the shell's own `kill`,
/// so no procps is needed).
fn interrupt(pid: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("kill -INT {pid}")])
            .status()
            .unwrap()
            .success()
    );
}

/// The command lines of running processes that contain `needle` (read from
/// /proc, so no procps is needed).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmd| cmd.contains(needle))
        .collect()
}

/// `weft up` running in `home`, and its output (stdout and stderr) line by
/// line.
struct Up {
    child: Child,
    pid: u32,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    /// Starts it with the status table every `every` seconds and no
    /// database given (so it makes a throwaway cluster).
    fn start(home: &Path, every: &str) -> Self {
        let mut child = Command::new(binary("weft").unwrap())
            .args(["up", "--every", every, "--home"])
            .arg(home)
            .env_remove("DATABASE_URL")
            .env_remove("WEFT_DISCOVERY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            pid: child.id(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line, waiting at most until `until`.
    fn next(&mut self, until: Instant) -> Option<String> {
        let line = self
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .ok()?;
        self.seen.push(line.clone());
        Some(line)
    }
}

/// The throwaway clusters `weft up` process `pid` has in the temporary
/// directory.
fn cluster_dirs(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("weft-pg-{pid}-")))
        })
        .collect()
}

fn instance_records(home: &Path) -> usize {
    let Ok(services) = std::fs::read_dir(home.join("discovery")) else {
        return 0;
    };
    services
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "instance"))
        .count()
}

#[test]
fn weft_up_runs_the_mesh_until_ctrl_c_and_leaves_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let mut up = Up::start(home.path(), "1");
    let pid = up.pid;

    // Ready within two minutes, with a PlaceOrder command to paste.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut place = None;
    loop {
        let Some(line) = up.next(deadline) else {
            let _ = up.child.kill();
            panic!("weft up never became ready");
        };
        if line.contains("OrdersService/PlaceOrder") && line.trim_start().starts_with("grpcurl") {
            place = Some(line.trim().to_owned());
        }
        if line.contains("Ctrl-C drains") {
            break;
        }
    }
    let place = place.expect("a grpcurl PlaceOrder command was printed");

    // The printed command works as printed (grpcurl from the tools).
    let grpcurl = tool("grpcurl").unwrap();
    let command = place.replacen("grpcurl", &format!("'{}'", grpcurl.display()), 1);
    let out = Command::new("sh").args(["-c", &command]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ORDER_STATUS_CONFIRMED"), "{stdout}");

    // weft call, by service name through discovery.
    let out = weft(
        home.path(),
        &[
            "call",
            "orders/ListOrders",
            "-d",
            r#"{"customer_id":"alice"}"#,
        ],
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains("ORDER_STATUS_CONFIRMED") && listed.contains("WIDGET-1"),
        "{listed}"
    );
    // A bad request is refused with the field named.
    let out = weft(
        home.path(),
        &["call", "orders/GetOrder", "-d", r#"{"order_id":"nope"}"#],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("order_id"),
        "{:?}",
        out
    );

    // ls and health see six healthy, serving instances.
    let out = weft(home.path(), &["ls"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{ls}");
    assert_eq!(ls.matches(" healthy ").count(), 6, "{ls}");
    let out = weft(home.path(), &["health"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("Serving")
            .count(),
        6
    );
    assert_eq!(instance_records(home.path()), 6);

    // The status table shows the calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(line) = up.next(deadline) {
        if line.starts_with("orders ") && !line.contains(" 0.0 ") {
            break;
        }
    }

    // Ctrl-C: everything drains and stops, deregistered, cluster removed.
    assert_eq!(
        cluster_dirs(pid).len(),
        1,
        "a throwaway cluster while running"
    );
    interrupt(&pid.to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "weft up did not stop: {:#?}",
            up.seen
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    while up
        .next(Instant::now() + Duration::from_millis(200))
        .is_some()
    {}
    let seen = &up.seen;
    assert!(status.success(), "weft up exited with {status}: {seen:#?}");
    assert!(seen.iter().any(|l| l.contains("[up] stopped")), "{seen:#?}");
    assert_eq!(
        instance_records(home.path()),
        0,
        "instances left registered"
    );
    assert!(cluster_dirs(pid).is_empty(), "the cluster was not removed");
    // Nothing of the cluster runs any more (its watcher, which would have
    // cleaned up after a crash, notices the exit within a second or two).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&format!("weft-pg-{pid}-"));
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_second_ctrl_c_stops_weft_up_at_once() {
    let home = tempfile::tempdir().unwrap();
    let mut up = Up::start(home.path(), "60");
    let pid = up.pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = up.next(deadline).expect("weft up never became ready");
        if line.contains("Ctrl-C drains") {
            break;
        }
    }
    let interrupt = || interrupt(&pid);
    interrupt();
    // Wait for the drain to begin, then interrupt again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(line) = up.next(deadline) {
        if line.contains("Ctrl-C again") {
            break;
        }
    }
    interrupt();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a second Ctrl-C did not stop it"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    // Even then the throwaway cluster is gone.
    let left = cluster_dirs(up.pid);
    assert!(left.is_empty(), "cluster left behind: {left:?}");
}

/// A `weft up` killed with SIGKILL, and not yet reaped by its parent (a
/// zombie, as under a supervisor that is slow to wait), still has its
/// throwaway cluster stopped and removed.
#[test]
fn a_killed_weft_up_leaves_no_cluster_even_before_it_is_reaped() {
    let home = tempfile::tempdir().unwrap();
    let mut up = Up::start(home.path(), "60");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = up.next(deadline).expect("weft up never became ready");
        if line.contains("Ctrl-C drains") {
            break;
        }
    }
    assert_eq!(
        cluster_dirs(up.pid).len(),
        1,
        "a throwaway cluster while running"
    );
    let _ = Command::new("kill")
        .args(["-KILL", &up.pid.to_string()])
        .status();
    // Not waited for: the process stays a zombie meanwhile.
    let started = Instant::now();
    while !cluster_dirs(up.pid).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the cluster of a killed, unreaped weft up was left behind"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = std::fs::read_to_string(format!("/proc/{}/stat", up.pid)).unwrap_or_default();
    assert!(
        state.contains(") Z "),
        "the check ran while weft up was a zombie: {state}"
    );
    up.child.wait().unwrap();
}
