//! Inventory's shutdown protocol with the local discovery backend: on the
//! signal it reports NOT_SERVING and leaves discovery at once, keeps serving
//! for the drain period, then closes and lets an in-flight call finish.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use weft_discovery::{Discovery, Filter, Resolver};
use weft_inventory::RegistrationConfig;
use weft_mesh::DrainConfig;
use weft_proto::inventory::v1 as pb;
use weft_proto::money::v1::Money;
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, config, mtls};
use weft_tests::pki::TestPki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_before_closing_and_finishes_in_flight_calls() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    let registry = tempfile::tempdir().unwrap();
    let setting = format!(
        "local://{}?ttl_ms=3000&poll_ms=50",
        registry.path().display()
    );
    let mut cfg = config(
        &db,
        mtls(pki.service("inventory", "inventory").unwrap(), None),
    );
    cfg.registration = Some(RegistrationConfig {
        discovery: setting.clone(),
        instance_id: "inv-1".into(),
        advertise: None,
        attributes: [("version".to_string(), "1".to_string())].into(),
    });
    cfg.drain = DrainConfig {
        drain_period: Duration::from_millis(1500),
        grace_period: Duration::from_secs(10),
        ..Default::default()
    };
    let client_identity = pki.operator("operator-test", "test").unwrap();
    let server = Inventory::start_with(cfg, Some(client_identity), Some(pki.clone()))
        .await
        .unwrap();

    // Registered, and healthy once the database answers.
    let discovery = Discovery::from_setting(&setting).await.unwrap();
    let mut rx = discovery.watch("inventory", &Filter::any()).unwrap();
    let s = rx
        .wait_for(|s| s.endpoints.iter().any(|e| e.id == "inv-1" && e.healthy))
        .await
        .unwrap()
        .clone();
    assert_eq!(s.endpoints[0].addr, server.addr());

    let mut client = server.client().await.unwrap();
    client
        .create_product(pb::CreateProductRequest {
            idempotency_key: "p".into(),
            sku: "A".into(),
            name: "A".into(),
            unit_price: Some(Money {
                amount_minor: 1,
                currency_code: "EUR".into(),
            }),
            initial_stock: 5,
        })
        .await
        .unwrap();

    // An in-flight call: the product row is locked, so AdjustStock waits.
    let mut blocker = db.connect().await.unwrap();
    let tx = blocker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM inventory.products WHERE sku = 'A' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let mut slow_client = client.clone();
    let in_flight = tokio::spawn(async move {
        slow_client
            .adjust_stock(pb::AdjustStockRequest {
                idempotency_key: "adj".into(),
                sku: "A".into(),
                delta: 1,
                reason: "in flight during shutdown".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let addr = server.addr();
    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());

    // At once: NOT_SERVING on health, gone from discovery, still answering.
    rx.wait_for(|s| s.endpoints.is_empty()).await.unwrap();
    let gone_after = started.elapsed();
    assert!(
        gone_after < Duration::from_millis(1000),
        "deregistered after {gone_after:?}"
    );
    let status = health_of(&pki, addr).await;
    assert_eq!(status, ServingStatus::NotServing);
    let still = client
        .get_product(pb::GetProductRequest { sku: "B".into() })
        .await
        .unwrap_err();
    assert_eq!(
        still.code(),
        tonic::Code::NotFound,
        "calls are still served while draining"
    );

    // After the drain period the listener closes, the in-flight call is let
    // finish once its lock is released, and the server stops cleanly.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!in_flight.is_finished());
    tx.rollback().await.unwrap();
    let adjusted = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(adjusted.into_inner().stock.unwrap().available, 6);
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the drain period was kept"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

async fn health_of(pki: &TestPki, addr: std::net::SocketAddr) -> ServingStatus {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let store = weft_mesh::CertStore::load(
        pki.operator("operator-health", "health").unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let tls =
        weft_mesh::client_config(&store, weft_tests::inventory::inventory_id().unwrap()).unwrap();
    let mut health = HealthClient::new(weft_mesh::mtls_channel(addr, tls).unwrap());
    health
        .check(HealthCheckRequest {
            service: "weft.inventory.v1.InventoryService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}
