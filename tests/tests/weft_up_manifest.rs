//! `weft up` running a manifest: the wishlist example (examples/wishlist,
//! built by following docs/adding-a-service.md) beside Weft's demo, every
//! instance a supervised process. The example is called through the mesh,
//! with grpcurl and with its generated Python SDK; under `weft load`, a
//! `weft kill` of an instance is restarted by the supervisor and a `weft
//! restart` rolls a service, and the load sees no failed order; Ctrl-C
//! leaves no process, registration or cluster behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weft_tests::process::binary;
use weft_tests::tools::tool;
use weft_tests::up::{
    Up, cluster_dirs, eventually, instance_records, processes_with_env, weft, weft_command,
    weft_home,
};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The address of `instance` as `weft ls` lists it.
fn address_of(home: &Path, instance: &str) -> String {
    let service = instance.rsplit_once('-').unwrap().0;
    let out = weft(home, &["ls", service]).unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    listed
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(1) == Some(&instance)).then(|| fields[2].to_owned())
        })
        .unwrap_or_else(|| panic!("{instance} not in weft ls: {listed}"))
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `weft load` placing `count` single-item orders of a product with stock
/// for all of them, 20 a second.
fn load(home: &Path, account: &str, count: u64) -> Child {
    let count = count.to_string();
    weft_command(
        home,
        &[
            "load",
            "--rate",
            "20",
            "--sku",
            "GIZMO-1",
            "--account",
            account,
            "--count",
            &count,
        ],
    )
    .unwrap()
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

#[test]
fn a_manifest_runs_supervised_and_survives_kills_and_restarts_under_load() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let manifest = repository().join("examples/wishlist/weft.toml");
    let mut up = Up::start(home, "1", &["--manifest", manifest.to_str().unwrap()]).unwrap();
    let pid = up.pid;
    // Building the example (a no-op when the test run built it) and
    // starting eight processes.
    up.wait_for("Ctrl-C drains", Duration::from_secs(300))
        .unwrap();
    let alice = up
        .seen
        .iter()
        .find_map(|l| {
            l.split_once("alice ")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_owned())
        })
        .expect("the demo accounts were printed");
    assert_eq!(
        processes_with_env("WEFT_SUPERVISOR_PID", &pid.to_string()).len(),
        8,
        "eight instance processes"
    );
    // With no names, ls and health cover every service discovery knows,
    // the example included.
    let listed = ok(weft(home, &["ls"]).unwrap());
    assert_eq!(listed.matches(" healthy ").count(), 8, "{listed}");
    assert!(listed.contains("wishlist-2"), "{listed}");
    assert_eq!(
        ok(weft(home, &["health"]).unwrap())
            .matches("Serving")
            .count(),
        8
    );
    assert_eq!(
        ok(weft(home, &["health", "wishlist"]).unwrap())
            .matches("Serving")
            .count(),
        2
    );

    // The example, through the mesh: grpcurl with reflection...
    let certs = home.join("certs");
    let wishlist = address_of(home, "wishlist-1");
    let grpcurl = |args: &[&str]| {
        Command::new(tool("grpcurl").unwrap())
            .arg("-cacert")
            .arg(certs.join("ca.pem"))
            .arg("-cert")
            .arg(certs.join("operator-dev.pem"))
            .arg("-key")
            .arg(certs.join("operator-dev.key"))
            .args(args)
            .output()
            .unwrap()
    };
    let listed = ok(grpcurl(&[&wishlist, "list"]));
    assert!(listed.contains("wishlist.v1.WishlistService"), "{listed}");
    ok(grpcurl(&[
        "-d",
        r#"{"customer_id":"carol","sku":"WIDGET-1"}"#,
        &wishlist,
        "wishlist.v1.WishlistService/AddItem",
    ]));
    let items = ok(grpcurl(&[
        "-d",
        r#"{"customer_id":"carol"}"#,
        &wishlist,
        "wishlist.v1.WishlistService/ListItems",
    ]));
    // The name and price came from inventory, called through the mesh.
    assert!(
        items.contains("WIDGET-1") && items.contains("Widget"),
        "{items}"
    );
    let unknown = grpcurl(&[
        "-d",
        r#"{"customer_id":"carol","sku":"NOPE-1"}"#,
        &wishlist,
        "wishlist.v1.WishlistService/AddItem",
    ]);
    let refused = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        refused.contains("NotFound") && refused.contains("NOPE-1"),
        "{refused}"
    );
    // ...by service name with weft call...
    let called = ok(weft(
        home,
        &[
            "call",
            "wishlist/ListItems",
            "-d",
            r#"{"customer_id":"carol"}"#,
        ],
    )
    .unwrap());
    assert!(called.contains("WIDGET-1"), "{called}");
    // ...and with the generated Python SDK, on the other instance.
    let repo = repository();
    let sdk = Command::new(tool("python").unwrap())
        .arg(repo.join("examples/wishlist/sdk/python/wishlist_call.py"))
        .arg(address_of(home, "wishlist-2"))
        .arg(&certs)
        .args(["carol", "GIZMO-1"])
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                repo.join("sdk/python/src").display(),
                repo.join("examples/wishlist/sdk/python").display()
            ),
        )
        .output()
        .unwrap();
    let skus = ok(sdk);
    assert!(
        skus.contains("WIDGET-1") && skus.contains("GIZMO-1"),
        "{skus}"
    );

    // Under load: kill an inventory and an orders instance, then roll
    // inventory. The supervisor restarts the killed ones; no order fails.
    let running = load(home, &alice, 500);
    std::thread::sleep(Duration::from_secs(3));
    for victim in ["inventory-1", "orders-1"] {
        let said = ok(weft_home(home, &["kill", victim]).unwrap());
        assert!(said.contains("the supervisor restarts it"), "{said}");
        up.wait_for(&format!("{victim} started again"), Duration::from_secs(30))
            .unwrap();
    }
    let rolled = weft_home(home, &["restart", "inventory"]).unwrap();
    let said = ok(rolled);
    assert!(
        said.contains("restarted 2 instance(s) of inventory"),
        "{said}"
    );
    let out = running.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("500 sent, 500 confirmed, 0 rejected, 0 errors"),
        "{report}"
    );

    // The status table counted the two crashes, and each instance's log
    // holds every process it ran.
    for id in ["inventory-1", "orders-1"] {
        let line = up
            .wait_until(Duration::from_secs(10), |l| {
                // A row of the table, not an event line about the instance.
                !l.starts_with("[up]") && l.split_whitespace().nth(1) == Some(id)
            })
            .unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.get(5),
            Some(&"1"),
            "one restart after a crash: {line}"
        );
    }
    let log = ok(weft_home(home, &["logs", "inventory-1"]).unwrap());
    assert_eq!(
        log.matches("inventory serving mTLS").count(),
        3,
        "started, restarted after the kill, restarted by weft restart: {log}"
    );
    let tail = ok(weft_home(home, &["logs", "inventory-1", "--tail", "2"]).unwrap());
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(
        !log.contains('\u{1b}'),
        "a log file has no terminal colours"
    );

    // Ctrl-C: nothing left behind.
    let status = up.interrupt(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "{:#?}", up.seen);
    assert_eq!(instance_records(home), 0, "instances left registered");
    assert!(cluster_dirs(pid).is_empty(), "the cluster was not removed");
    assert!(
        processes_with_env("WEFT_SUPERVISOR_PID", &pid.to_string()).is_empty(),
        "instances still running"
    );
    eventually(Duration::from_secs(10), "the control socket goes", || {
        !home.join("control.sock").exists()
    })
    .unwrap();
}

#[test]
fn a_manifest_with_a_mistake_is_refused_before_anything_starts() {
    let home = tempfile::tempdir().unwrap();
    let manifest = home.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "[[service]]\nname = \"shop\"\nbinary = \"weft-inventory\"\ndepends_on = [\"catalog\"]\n",
    )
    .unwrap();
    let out = Command::new(binary("weft").unwrap())
        .args(["up", "--home"])
        .arg(home.path().join("home"))
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("service shop: depends on catalog, which the manifest does not list"),
        "{said}"
    );
    assert!(!home.path().join("home/certs").exists(), "nothing was made");
}
