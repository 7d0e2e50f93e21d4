//! A deadline set by the first caller holds two hops away: caller → relay →
//! a slow inventory, all over mTLS, the relay calling through the mesh client.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Server;
use tonic::{Request, Response};
use weft_mesh::{
    CertStore, ClientOptions, DeadlineLayer, MeshChannel, SpiffeId, client_config, mtls_channel,
};
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use weft_tests::cluster::Cluster;
use weft_tests::pki::TRUST_DOMAIN;
use weft_tests::servers::mtls_listener;

/// What the far end saw: the timeout it was given, and when its handler was
/// abandoned.
#[derive(Debug, Default)]
struct Seen {
    timeout: Option<Duration>,
    dropped_at: Option<Instant>,
}

struct DropGuard(Arc<Mutex<Seen>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().dropped_at = Some(Instant::now());
    }
}

/// GetStock takes 5 s here; everything else is not needed.
#[derive(Clone)]
struct Slow(Arc<Mutex<Seen>>);

/// GetStock is forwarded to inventory through the mesh client.
#[derive(Clone)]
struct Relay(MeshChannel);

weft_tests::get_stock_only!(Slow, |this, request| {
    // tonic keeps grpc-timeout out of the metadata; the deadline layer
    // turned it into this task's deadline.
    let _ = request;
    this.0.lock().unwrap().timeout = weft_mesh::current_deadline()
        .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
    let _guard = DropGuard(this.0.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(Response::new(pb::GetStockResponse::default()))
});

weft_tests::get_stock_only!(Relay, |this, request| {
    let mut next = InventoryServiceClient::new(this.0.clone());
    next.get_stock(request.into_inner()).await
});

async fn serve<S>(service: S, store: &CertStore) -> std::net::SocketAddr
where
    S: InventoryService,
{
    let (addr, incoming) = mtls_listener(store, &Default::default()).await.unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = Server::builder()
        .layer(DeadlineLayer)
        .add_service(health)
        .add_service(InventoryServiceServer::new(service))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_set_by_the_first_caller_is_enforced_two_hops_away() {
    let cluster = Cluster::new().unwrap();
    let pki = cluster.pki().clone();

    // Hop 2: a slow inventory, registered in discovery.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let inventory_store = CertStore::load(
        pki.service("inventory", "inventory").unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let slow_addr = serve(Slow(seen.clone()), &inventory_store).await;
    cluster.register("slow-1", slow_addr).await.unwrap();

    // Hop 1: the relay, calling inventory through the mesh client.
    let to_inventory = cluster.channel(ClientOptions::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !to_inventory.endpoints().iter().any(|e| e.available()) {
        assert!(
            Instant::now() < deadline,
            "inventory never became available"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_store = CertStore::load(
        pki.service("relay", "relay").unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let relay_addr = serve(Relay(to_inventory), &relay_store).await;

    // The first caller allows 300 ms.
    let caller_store = CertStore::load(
        pki.operator("caller", "caller").unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let tls = client_config(
        &caller_store,
        SpiffeId::service(TRUST_DOMAIN, "relay").unwrap(),
    )
    .unwrap();
    let mut client = InventoryServiceClient::new(mtls_channel(relay_addr, tls).unwrap());
    let mut request = Request::new(pb::GetStockRequest {
        skus: vec!["A".into()],
    });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = client.get_stock(request).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    assert!(
        took < Duration::from_millis(1000),
        "the caller waited {took:?}"
    );

    // Two hops away the deadline arrived, already shortened, and the slow
    // handler was abandoned at about the deadline rather than after 5 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap();
    let given = seen.timeout.expect("hop 2 received a deadline");
    assert!(
        given <= Duration::from_millis(300),
        "hop 2 was given {given:?}"
    );
    let abandoned = seen
        .dropped_at
        .expect("hop 2's handler was cancelled")
        .duration_since(started);
    assert!(
        abandoned < Duration::from_millis(1000),
        "hop 2 worked on for {abandoned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_method_timeout_bounds_calls_without_a_deadline() {
    let cluster = Cluster::new().unwrap();
    let pki = cluster.pki().clone();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let store = CertStore::load(
        pki.service("inventory", "inventory").unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let addr = serve(Slow(seen.clone()), &store).await;
    cluster.register("slow-1", addr).await.unwrap();

    let options = ClientOptions {
        method_timeouts: weft_mesh::client::MethodTimeouts::parse(
            "weft.inventory.v1.InventoryService/GetStock=200ms",
        )
        .unwrap(),
        ..ClientOptions::default()
    };
    let channel = cluster.channel(options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !channel.endpoints().iter().any(|e| e.available()) {
        assert!(
            Instant::now() < deadline,
            "inventory never became available"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let err = InventoryServiceClient::new(channel)
        .get_stock(pb::GetStockRequest {
            skus: vec!["A".into()],
        })
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(800),
        "took {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let given = seen
        .lock()
        .unwrap()
        .timeout
        .expect("the server was told the deadline");
    assert!(
        given <= Duration::from_millis(200),
        "the server was given {given:?}"
    );
}
