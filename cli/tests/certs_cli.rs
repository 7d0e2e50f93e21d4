//! `weft certs` as an operator runs it: the binary, its files and modes, and
//! its refusal to overwrite.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn init_issue_and_refuse_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let ok = weft(&[
        "certs",
        "init",
        "--dir",
        d,
        "--trust-domain",
        "corp.example",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let issued = weft(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--trust-domain",
        "corp.example",
        "--service",
        "orders",
        "--days",
        "7",
    ]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    assert!(
        String::from_utf8_lossy(&issued.stdout).contains("spiffe://corp.example/service/orders")
    );
    let operator = weft(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--trust-domain",
        "corp.example",
        "--operator",
        "alice",
    ]);
    assert!(operator.status.success());
    for key in ["ca.key", "orders.key", "operator-alice.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    let again = weft(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--trust-domain",
        "corp.example",
        "--service",
        "orders",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let reinit = weft(&["certs", "init", "--dir", d]);
    assert!(
        !reinit.status.success(),
        "the CA is never replaced silently"
    );
    let forced = weft(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--trust-domain",
        "corp.example",
        "--service",
        "orders",
        "--force",
    ]);
    assert!(forced.status.success());

    let bad = weft(&["certs", "issue", "--dir", d, "--service", "Not A Name"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spiffe://"));
}
