//! `weft-inventory health`, the command container health checks run: it
//! exits 0 only while the server on `WEFT_LISTEN` says SERVING over mTLS,
//! and 1 with a reason otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_tests::TestDb;
use weft_tests::pki::TestPki;
use weft_tests::process::{ServiceProcess, binary, service_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_follows_the_server() {
    let db = TestDb::create().await.unwrap();
    let pki = TestPki::new().unwrap();
    let identity = pki.service("inventory", "inventory").unwrap();
    // A free port for the server (and for the check to find it by).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = service_env(
        db.url(),
        &identity,
        &[
            ("WEFT_LISTEN", format!("0.0.0.0:{port}")),
            ("WEFT_METRICS_ADDR", "off".into()),
        ],
    );
    let inventory = binary("weft-inventory").unwrap();
    let health = || {
        Command::new(&inventory)
            .arg("health")
            .env_clear()
            .envs(&env)
            .output()
            .unwrap()
    };

    // Nothing listens yet: exit 1, saying why.
    let out = health();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());

    let mut server = ServiceProcess::start(&inventory, &env).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = health();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill();
    assert_eq!(health().status.code(), Some(1));
}
