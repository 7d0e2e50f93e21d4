//! A service whose discovery backend is unreachable at start keeps running:
//! it serves NOT_SERVING, says in its log what it cannot reach and when it
//! retries, and registers and turns SERVING by itself once Cloud Map answers
//! (a Cloud Map incident must not crash-loop every new task).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_discovery::Resolver;
use weft_discovery::cloudmap::{PollConfig, RegistrationMode};
use weft_tests::TestDb;
use weft_tests::moto::Moto;
use weft_tests::pki::TestPki;
use weft_tests::process::{ServiceProcess, binary, service_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_while_cloud_map_is_down_registers_once_it_is_back() {
    let db = TestDb::create().await.unwrap();
    let pki = TestPki::new().unwrap();
    let identity = pki.service("inventory", "inventory").unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    // Nothing listens on the Cloud Map port yet.
    let cloud_map_port = free();
    let port = free();
    let env = service_env(
        db.url(),
        &identity,
        &[
            ("WEFT_LISTEN", format!("127.0.0.1:{port}")),
            ("WEFT_DISCOVERY", "cloudmap://weft.test".into()),
            ("WEFT_INSTANCE_ID", "inventory-late".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{cloud_map_port}"),
            ),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("RUST_LOG", "info".into()),
        ],
    );
    let inventory = binary("weft-inventory").unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut server = ServiceProcess::start_logged(&inventory, &env, &log).unwrap();
    let ready = || {
        Command::new(&inventory)
            .args(["health", "--ready"])
            .env_clear()
            .envs(&env)
            .output()
            .unwrap()
            .status
            .success()
    };

    // Three seconds of Cloud Map being away: still running, not ready, and
    // saying why in words an operator can act on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !server.exited(),
        "exited: {}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    assert!(!ready(), "ready while unregistered");
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("cannot register at cloudmap://weft.test") && text.contains("retrying in"),
        "{text}"
    );

    // Cloud Map comes up (with the namespace, as the template makes it).
    let moto = Moto::start_on(cloud_map_port).await.unwrap();
    let cloud_map = moto
        .cloud_map(
            "weft.test",
            RegistrationMode::SelfRegister,
            PollConfig::default(),
        )
        .await
        .unwrap();
    moto.create_namespace(cloud_map.client(), "weft.test", &["inventory"])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "never ready after Cloud Map came back: {}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ...and clients find it, healthy.
    let mut rx = cloud_map
        .watch("inventory", &weft_discovery::Filter::any())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !rx
            .borrow()
            .endpoints
            .iter()
            .any(|e| e.id == "inventory-late")
        {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the instance never appeared healthy in Cloud Map");
    server.kill();
}
