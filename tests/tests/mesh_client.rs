//! The client half of the front door: one `MeshClient` gives a channel to a
//! service by name that generated clients take, presents the process's
//! identity and accepts only `service/<name>` of its trust domain.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_mesh::{CertStore, ClientOptions, MeshClient, SpiffeId};
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_tests::TestDb;
use weft_tests::inventory::Inventory;
use weft_tests::pki::TRUST_DOMAIN;

#[tokio::test]
async fn a_channel_by_name_reaches_the_service_and_only_the_service_of_that_name() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let operator = server.client_identity().unwrap().clone();
    // Discovery that lists the inventory server under two names.
    let addr = server.addr();
    let store = CertStore::load(operator, Duration::from_secs(60)).unwrap();
    let mesh = MeshClient::connect(
        &format!("static://inventory={addr};impostor={addr}"),
        Some(store),
        &[weft_proto::FILE_DESCRIPTOR_SET],
    )
    .await
    .unwrap()
    .with_service_options(
        "impostor",
        ClientOptions {
            max_attempts: 1,
            ..ClientOptions::default()
        },
    );
    assert_eq!(
        mesh.expected("payments").unwrap(),
        Some(SpiffeId::service(TRUST_DOMAIN, "payments").unwrap())
    );

    let mut inventory = InventoryServiceClient::new(mesh.channel("inventory").unwrap());
    let mut request = tonic::Request::new(pb::GetStockRequest {
        skus: vec!["NONE-1".into()],
    });
    request.set_timeout(Duration::from_secs(10));
    let answered = inventory.get_stock(request).await;
    assert!(
        answered.is_ok()
            || answered.as_ref().err().map(|s| s.code()) == Some(tonic::Code::NotFound),
        "{answered:?}"
    );

    // The same server under another name does not present that name's
    // identity: the channel refuses it.
    let mut impostor = InventoryServiceClient::new(mesh.channel("impostor").unwrap());
    let mut request = tonic::Request::new(pb::GetStockRequest {
        skus: vec!["NONE-1".into()],
    });
    request.set_timeout(Duration::from_secs(3));
    let refused = impostor.get_stock(request).await.unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{refused:?}"
    );
    server.stop().await.unwrap();
}

/// Serves grpc.health over mTLS as `store` on `listener` until `stop` fires.
async fn health_server(
    store: &CertStore,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let limits = weft_mesh::ServerLimits::default();
    let incoming = weft_tests::servers::mtls_incoming(listener, store, &limits).unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = limits
        .server()
        .add_routes(tonic::service::Routes::new(health))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        });
    tokio::spawn(async move {
        server.await.unwrap();
    })
}

/// An endpoint's connection is dialled when first used and again once it
/// closed: a server that stops and comes back on the same address is reached
/// by the next call on the same `Conn`; while it is away a call fails as one
/// never sent (so the client may send it elsewhere whatever its method).
#[tokio::test]
async fn a_connection_its_server_closed_is_dialled_again_by_the_next_call() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let pki = weft_tests::pki::TestPki::new().unwrap();
    let server_store = pki.service_store("health", "health").unwrap();
    let client_store = pki.service_store("caller", "caller").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let first = health_server(&server_store, listener, stopped).await;

    let tls = weft_mesh::client_config(&client_store, server_store.current().id).unwrap();
    let conn = weft_mesh::client::Conn::mtls(addr, tls).unwrap();
    let mut client = HealthClient::new(conn.clone());
    client.check(HealthCheckRequest::default()).await.unwrap();

    // The server's GOAWAY ends the connection; it does not wait on the client.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the server did not stop")
        .unwrap();
    let away = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert!(weft_mesh::client::never_sent(&away), "{away:?}");

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let second = health_server(&server_store, listener, stopped).await;
    client.check(HealthCheckRequest::default()).await.unwrap();
    stop.send(()).unwrap();
    second.await.unwrap();
}
