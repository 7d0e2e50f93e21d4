//! mTLS and authorization end to end, each over a real handshake on
//! 127.0.0.1 against inventory: who is refused, who is let in, what the
//! policy allows, and certificate rotation under continuous calls.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use weft_mesh::{
    CertStore, ClientTls, IdentityPaths, MtlsConnector, Policy, SpiffeId, client_config,
    mtls_channel,
};
use weft_proto::inventory::v1 as pb;
use weft_proto::money::v1::Money;
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, config, inventory_id, mtls};
use weft_tests::pki::{TRUST_DOMAIN, TestPki};

type InventoryClient = pb::inventory_service_client::InventoryServiceClient<Channel>;

async fn start(
    db: &TestDb,
    pki: &Arc<TestPki>,
    server: IdentityPaths,
    policy: Option<Policy>,
) -> Inventory {
    let client = pki.operator("operator-harness", "harness").unwrap();
    Inventory::start_with(
        config(db, mtls(server, policy)),
        Some(client),
        Some(pki.clone()),
    )
    .await
    .unwrap()
}

/// A health check over a channel built from a raw rustls configuration.
async fn check_with(addr: std::net::SocketAddr, tls: ClientTls) -> Result<(), tonic::Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(MtlsConnector::new(tls))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

/// A health check presenting `identity` and expecting inventory.
async fn check_as(server: &Inventory, identity: IdentityPaths) -> Result<(), tonic::Status> {
    let store = CertStore::load(identity, Duration::from_secs(60)).unwrap();
    check_with(
        server.addr(),
        client_config(&store, inventory_id().unwrap()).unwrap(),
    )
    .await
}

/// A client that presents no certificate (with a mesh verifier, unused:
/// the server refuses it first).
fn without_client_cert(pki: &TestPki) -> ClientTls {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_path()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(weft_mesh::provider::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let store = CertStore::load(
        pki.operator("no-cert", "no-cert").unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    client_config(&store, inventory_id().unwrap())
        .unwrap()
        .with_config(config)
}

fn refused(result: Result<(), tonic::Status>, what: &str) {
    let err = result.expect_err(what);
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{what}: {err:?}"
    );
}

#[tokio::test]
async fn clients_without_an_acceptable_certificate_are_refused() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    let server = start(
        &db,
        &pki,
        pki.service("inventory", "inventory").unwrap(),
        None,
    )
    .await;

    refused(
        check_with(server.addr(), without_client_cert(&pki)).await,
        "no client certificate",
    );
    refused(
        check_as(&server, pki.foreign("foreign", "orders").unwrap()).await,
        "foreign CA",
    );
    refused(
        check_as(&server, pki.expired("expired", "orders").unwrap()).await,
        "expired",
    );
    refused(
        check_as(&server, pki.not_yet_valid("future", "orders").unwrap()).await,
        "not yet valid",
    );
    // Plaintext is not served at all.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let err = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
    // The control: a valid client certificate is accepted.
    check_as(&server, pki.service("orders", "orders").unwrap())
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_client_refuses_a_server_that_is_another_service() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    // A server with a valid certificate from the right CA, for payments.
    let impostor = pki.service("payments", "payments").unwrap();
    let client = pki.service("orders", "orders").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(weft_inventory::run(
        listener,
        config(&db, mtls(impostor, None)),
        async {
            let _ = stopped.await;
        },
    ));

    let store = CertStore::load(client, Duration::from_secs(60)).unwrap();
    let expecting_inventory = client_config(&store, inventory_id().unwrap()).unwrap();
    let mut ok = false;
    for _ in 0..100 {
        // Retry until the server is up; every attempt must be refused.
        let result = check_with(addr, expecting_inventory.clone()).await;
        let err = result.expect_err("an impostor must be refused");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        // The same server is fine for a client that meant to call payments:
        // it is the identity check, not anything else, that refused.
        let expecting_payments =
            client_config(&store, SpiffeId::service(TRUST_DOMAIN, "payments").unwrap()).unwrap();
        if check_with(addr, expecting_payments).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the server never came up");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

const POLICY: &str = r#"
[[allow]]
methods = ["weft.inventory.v1.InventoryService/*"]
callers = ["spiffe://weft.test/service/orders"]

[[allow]]
methods = ["weft.inventory.v1.InventoryService/GetProduct", "weft.inventory.v1.InventoryService/GetStock", "weft.inventory.v1.InventoryService/ListProducts", "grpc.reflection.*"]
callers = ["spiffe://weft.test/operator/*"]
"#;

fn product(key: &str, sku: &str) -> pb::CreateProductRequest {
    pb::CreateProductRequest {
        idempotency_key: key.into(),
        sku: sku.into(),
        name: "Thing".into(),
        unit_price: Some(Money {
            amount_minor: 100,
            currency_code: "EUR".into(),
        }),
        initial_stock: 1,
    }
}

#[tokio::test]
async fn the_policy_allows_per_caller_and_method_and_denies_the_rest() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    let policy = Policy::from_toml(POLICY).unwrap();
    let server = start(
        &db,
        &pki,
        pki.service("inventory", "inventory").unwrap(),
        Some(policy),
    )
    .await;
    let client_as =
        |identity: IdentityPaths| InventoryClient::new(server.channel_as(identity).unwrap());

    let mut orders = client_as(pki.service("orders", "orders").unwrap());
    let mut alice = client_as(pki.operator("alice", "alice").unwrap());
    let mut payments = client_as(pki.service("payments", "payments").unwrap());

    // Allowed: orders may create; alice may read.
    orders.create_product(product("k1", "A")).await.unwrap();
    let got = alice
        .get_product(pb::GetProductRequest { sku: "A".into() })
        .await
        .unwrap();
    assert_eq!(got.into_inner().product.unwrap().sku, "A");

    // Denied: alice may not create, payments may not even read.
    let denied = [
        alice.create_product(product("k2", "B")).await.map(|_| ()),
        payments
            .get_product(pb::GetProductRequest { sku: "A".into() })
            .await
            .map(|_| ()),
    ];
    for result in denied {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let message = err.message().to_lowercase();
        for secret in ["spiffe", "orders", "policy", "rule", "operator"] {
            assert!(
                !message.contains(secret),
                "the denial reveals {secret:?}: {message}"
            );
        }
    }
    let err = orders
        .get_product(pb::GetProductRequest { sku: "B".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "B was never created");

    // Health stays open to every authenticated caller.
    let store = CertStore::load(
        pki.service("payments", "payments").unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let mut health = HealthClient::new(
        mtls_channel(
            server.addr(),
            client_config(&store, inventory_id().unwrap()).unwrap(),
        )
        .unwrap(),
    );
    health.check(HealthCheckRequest::default()).await.unwrap();
    server.stop().await.unwrap();
}

/// The leaf certificate a full handshake gets from the server (session
/// resumption is off: a resumed session would not show the certificate).
async fn server_leaf(addr: std::net::SocketAddr, tls: ClientTls) -> CertificateDer<'static> {
    let mut tls = (*tls.config()).clone();
    tls.resumption = rustls::client::Resumption::disabled();
    let tls = Arc::new(tls);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn file_leaf(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_disk_without_a_failed_call() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    let server_paths = pki.service("inventory", "inventory").unwrap();
    let server = start(&db, &pki, server_paths.clone(), None).await;
    let client_paths = pki.service("orders", "orders").unwrap();
    let store = CertStore::load(client_paths.clone(), Duration::from_millis(100)).unwrap();
    let tls = client_config(&store, inventory_id().unwrap()).unwrap();
    let old_server_leaf = server_leaf(server.addr(), tls.clone()).await;

    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut workers = Vec::new();
    for fresh_connections in [false, true] {
        let (tls, addr) = (tls.clone(), server.addr());
        let (calls, failures, running) = (calls.clone(), failures.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let long_lived = HealthClient::new(mtls_channel(addr, tls.clone()).unwrap());
            // Bounded in time too, so a failing test cannot leave it spinning.
            let started = tokio::time::Instant::now();
            while running.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                // One worker keeps a connection; the other handshakes anew
                // for every call, so rotation meets both.
                let mut client = if fresh_connections {
                    HealthClient::new(mtls_channel(addr, tls.clone()).unwrap())
                } else {
                    long_lived.clone()
                };
                match client.check(HealthCheckRequest::default()).await {
                    Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if failures.load(Ordering::Relaxed) < 3 {
                            eprintln!(
                                "failed call (fresh={fresh_connections}) after {} ok: {e:?}",
                                calls.load(Ordering::Relaxed)
                            );
                        }
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Rotate both sides: new keys and certificates at the same paths.
    pki.service("inventory", "inventory").unwrap();
    pki.service("orders", "orders").unwrap();
    let new_server_leaf = file_leaf(&server_paths.cert);
    let new_client_leaf = file_leaf(&client_paths.cert);
    assert_ne!(old_server_leaf, new_server_leaf);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let server_rotated = server_leaf(server.addr(), tls.clone()).await == new_server_leaf;
        let client_rotated = store.current().key.cert[0] == new_client_leaf;
        if server_rotated && client_rotated {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            running.store(false, Ordering::Relaxed);
            panic!(
                "certificates were not reloaded within 10 s: server {server_rotated}, client {client_rotated}, generation {}",
                store.current().generation
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keep calling across and after the swap.
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (calls, failures) = (
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    assert!(calls > 50, "only {calls} calls were made");
    assert_eq!(
        failures, 0,
        "{failures} of {calls} calls failed during rotation"
    );
    // A new connection presents the new client certificate, and it is accepted.
    assert_eq!(store.current().generation, 2);
    check_with(server.addr(), tls).await.unwrap();
    server.stop().await.unwrap();
}
