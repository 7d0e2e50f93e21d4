//! A policy kept in SSM Parameter Store (`WEFT_POLICY=ssm:NAME`), with the
//! service binary run as its own process and the real SDK reaching the moto
//! server: read as the server starts, a change applied within a poll, a
//! malformed update refused with the policy in use kept, and a server
//! whose policy parameter is missing refusing to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use weft_mesh::{CertStore, SpiffeId, client_config, mtls_channel};
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_tests::TestDb;
use weft_tests::moto::Moto;
use weft_tests::pki::{TRUST_DOMAIN, TestPki};
use weft_tests::process::{ServiceProcess, binary, service_env};

const NAME: &str = "/weft/test/policy/inventory";

fn allowing(operator: &str) -> String {
    format!(
        "[[allow]]\nmethods = [\"weft.inventory.v1.InventoryService/*\"]\ncallers = [\"spiffe://{TRUST_DOMAIN}/operator/{operator}\"]\n"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_in_ssm_is_read_at_start_and_followed() {
    let moto = Moto::start().await.unwrap();
    let put = |value: String| {
        let moto = &moto;
        async move { moto.put_parameter(NAME, &value).await.unwrap() }
    };
    put(allowing("bob")).await;

    let db = TestDb::create().await.unwrap();
    let pki = TestPki::new().unwrap();
    let identity = pki.service("inventory", "inventory").unwrap();
    let aws = |policy: &str, port: u16| {
        service_env(
            db.url(),
            &identity,
            &[
                ("WEFT_LISTEN", format!("127.0.0.1:{port}")),
                ("WEFT_POLICY", format!("ssm:{policy}")),
                ("WEFT_POLICY_POLL_MS", "200".into()),
                ("AWS_ENDPOINT_URL", moto.url()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID", "testing".into()),
                ("AWS_SECRET_ACCESS_KEY", "testing".into()),
                ("RUST_LOG", "info".into()),
            ],
        )
    };
    let port = free_port();
    let env = aws(NAME, port);
    let inventory = binary("weft-inventory").unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut server = ServiceProcess::start_logged(&inventory, &env, &log).unwrap();
    let client = |who: &str| {
        let store = CertStore::load(
            pki.operator(&format!("operator-{who}"), who).unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
        let tls = client_config(
            &store,
            SpiffeId::service(TRUST_DOMAIN, "inventory").unwrap(),
        )
        .unwrap();
        InventoryServiceClient::new(mtls_channel(([127, 0, 0, 1], port).into(), tls).unwrap())
    };
    let (mut bob, mut alice) = (client("bob"), client("alice"));
    let list = pb::ListProductsRequest::default;
    // Up, with the parameter's policy: bob may, alice may not.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bob.list_products(list()).await.is_err() {
        assert!(
            Instant::now() < deadline && !server.exited(),
            "never served: {}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        alice.list_products(list()).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // The parameter changes: within a poll, alice may and bob may not.
    put(allowing("alice")).await;
    let changed = Instant::now();
    while alice.list_products(list()).await.is_err() {
        assert!(changed.elapsed() < Duration::from_secs(3), "not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a policy change in SSM applied within {:?}",
        changed.elapsed()
    );
    assert_eq!(
        bob.list_products(list()).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A malformed update: refused, the policy in use kept.
    put("[[allow]]\nmethods = [\"Nope\"]\ncallers = [\"*\"]\n".into()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    alice.list_products(list()).await.unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("refused; keeping what is in use"), "{text}");
    server.kill();

    // A server whose policy parameter does not exist does not start.
    let missing = Command::new(&inventory)
        .env_clear()
        .envs(aws("/weft/test/policy/nothing", free_port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&missing.stderr).to_string()
        + &String::from_utf8_lossy(&missing.stdout);
    assert!(!missing.status.success(), "{said}");
    assert!(
        said.contains("the policy in ssm:/weft/test/policy/nothing"),
        "{said}"
    );
}
