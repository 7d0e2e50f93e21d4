//! `weft up` driven as a user would: start it with nothing but the
//! PostgreSQL server programs (no database given: it makes a throwaway
//! cluster), wait until it says it is ready, run the grpcurl command it
//! printed and a `weft call`, `weft ls` and `weft health`, press Ctrl-C, and
//! check that nothing is left running or registered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_tests::process::binary;
use weft_tests::tools::tool;
use weft_tests::up::{
    Up, cluster_dirs, eventually, instance_records, is_zombie, processes_mentioning,
    processes_with_env, signal, weft, weft_home,
};

#[test]
fn weft_up_runs_the_mesh_until_ctrl_c_and_leaves_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let mut up = Up::start(home.path(), "1", &[]).unwrap();
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
    )
    .unwrap();
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
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("order_id"),
        "{:?}",
        out
    );

    // ls and health see six healthy, serving instances.
    let out = weft(home.path(), &["ls"]).unwrap();
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{ls}");
    assert_eq!(ls.matches(" healthy ").count(), 6, "{ls}");
    let out = weft(home.path(), &["health"]).unwrap();
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

    // The route table is live: `weft route set` writes the home's routes
    // file, and every instance applies it within its poll (a second).
    let routes_applied = |instance: &str| {
        let out = weft_home(home.path(), &["logs", instance]).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("routes.toml") && l.contains("applied"))
            .count()
    };
    let before: Vec<usize> = ["orders-1", "inventory-1"]
        .iter()
        .map(|i| routes_applied(i))
        .collect();
    assert!(
        before.iter().all(|n| *n >= 1),
        "no routes read at start: {before:?}"
    );
    let out = Command::new(binary("weft").unwrap())
        .args(["route", "--routes"])
        .arg(home.path().join("routes.toml"))
        .args(["set", "inventory", "version=0.1.0:90", "version=0.2.0:10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(binary("weft").unwrap())
        .args(["route", "--routes"])
        .arg(home.path().join("routes.toml"))
        .args(["show", "inventory"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("version=0.1.0: 90, version=0.2.0: 10"),
        "{shown}"
    );
    eventually(
        Duration::from_secs(5),
        "every instance applies the routes",
        || {
            ["orders-1", "inventory-1"]
                .iter()
                .zip(&before)
                .all(|(i, n)| routes_applied(i) > *n)
        },
    )
    .unwrap();
    // The status table shows the calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(line) = up.next(deadline) {
        if line.starts_with("orders ") && !line.contains(" 0.0 ") {
            break;
        }
    }

    // Ctrl-C: everything drains and stops, deregistered, cluster removed,
    // no instance left running.
    assert_eq!(
        cluster_dirs(pid).len(),
        1,
        "a throwaway cluster while running"
    );
    let instances = processes_with_env("WEFT_SUPERVISOR_PID", &pid.to_string());
    assert_eq!(instances.len(), 6, "six instance processes while running");
    let status = up.interrupt(Duration::from_secs(60)).unwrap();
    let seen = &up.seen;
    assert!(status.success(), "weft up exited with {status}: {seen:#?}");
    assert!(seen.iter().any(|l| l.contains("[up] stopped")), "{seen:#?}");
    assert_eq!(
        instance_records(home.path()),
        0,
        "instances left registered"
    );
    assert!(cluster_dirs(pid).is_empty(), "the cluster was not removed");
    assert!(
        processes_with_env("WEFT_SUPERVISOR_PID", &pid.to_string()).is_empty(),
        "instances still running"
    );
    // Nothing of the cluster runs any more (its watcher, which would have
    // cleaned up after a crash, notices the exit within a second or two).
    eventually(
        Duration::from_secs(10),
        "the cluster's processes end",
        || processes_mentioning(&format!("weft-pg-{pid}-")).is_empty(),
    )
    .unwrap();
}

#[test]
fn a_second_ctrl_c_stops_weft_up_at_once() {
    let home = tempfile::tempdir().unwrap();
    let mut up = Up::start(home.path(), "60", &[]).unwrap();
    up.wait_for("Ctrl-C drains", Duration::from_secs(120))
        .unwrap();
    signal(up.pid, "INT").unwrap();
    // Wait for the drain to begin, then interrupt again.
    up.wait_for("Ctrl-C again", Duration::from_secs(10))
        .unwrap();
    signal(up.pid, "INT").unwrap();
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
    // Even then the throwaway cluster is gone, and the instances (killed
    // at once) with it.
    let left = cluster_dirs(up.pid);
    assert!(left.is_empty(), "cluster left behind: {left:?}");
    eventually(Duration::from_secs(5), "the instances end", || {
        processes_with_env("WEFT_SUPERVISOR_PID", &up.pid.to_string()).is_empty()
    })
    .unwrap();
}

/// A `weft up` killed with SIGKILL, and not yet reaped by its parent (a
/// zombie, as under a supervisor that is slow to wait), still has its
/// throwaway cluster stopped and removed, and its instances stop.
#[test]
fn a_killed_weft_up_leaves_no_cluster_and_no_instance_even_before_it_is_reaped() {
    let home = tempfile::tempdir().unwrap();
    let mut up = Up::start(home.path(), "60", &[]).unwrap();
    up.wait_for("Ctrl-C drains", Duration::from_secs(120))
        .unwrap();
    assert_eq!(
        cluster_dirs(up.pid).len(),
        1,
        "a throwaway cluster while running"
    );
    let supervisor = up.pid.to_string();
    assert_eq!(
        processes_with_env("WEFT_SUPERVISOR_PID", &supervisor).len(),
        6
    );
    signal(up.pid, "KILL").unwrap();
    // Not waited for: the process stays a zombie meanwhile.
    eventually(
        Duration::from_secs(15),
        "the cluster of a killed, unreaped weft up is removed",
        || cluster_dirs(up.pid).is_empty(),
    )
    .unwrap();
    assert!(
        is_zombie(up.pid),
        "the check ran while weft up was a zombie"
    );
    // The instances were told (SIGTERM from the kernel) and drain.
    eventually(
        Duration::from_secs(60),
        "the instances of a killed weft up end",
        || processes_with_env("WEFT_SUPERVISOR_PID", &supervisor).is_empty(),
    )
    .unwrap();
    up.child.wait().unwrap();
}
