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
