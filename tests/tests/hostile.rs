//! Hostile callers against a real service: what a caller sends must not
//! grow what the service keeps. Here: 10,000 calls to made-up method paths
//! (long ones, each different), all denied by the shipped policy, leave the
//! metrics' series where they were, but for one `unknown` bucket, while
//! served methods keep their own labels. (Connection-level abuse:
//! hostile_connections.rs.)

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tonic::codegen::http::uri::PathAndQuery;
use weft_mesh::Metrics;
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, config, mtls};
use weft_tests::pki::TestPki;

/// Calls made up.
const CALLS: usize = 10_000;

fn series(metrics: &Metrics) -> usize {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("weft_server_"))
        .count()
}

#[tokio::test]
async fn calls_to_made_up_paths_leave_the_metric_series_bounded() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    let policy = weft_mesh::Policy::from_toml(
        &include_str!("../../config/policy/inventory.toml")
            .replace("weft.local", weft_tests::pki::TRUST_DOMAIN),
    )
    .unwrap();
    let mut cfg = config(
        &db,
        mtls(pki.service("inventory", "inventory").unwrap(), Some(policy)),
    );
    let metrics = Arc::new(Metrics::new());
    cfg.metrics = metrics.clone();
    let operator = pki.operator("operator-test", "test").unwrap();
    let server = Inventory::start_with(cfg, Some(operator), Some(pki))
        .await
        .unwrap();
    let channel = server.channel().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);

    // One made-up call first, so the `unknown` bucket exists before counting.
    let call = |path: String| {
        let mut grpc = grpc.clone();
        async move {
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<(), ()>::default();
            grpc.unary(
                tonic::Request::new(()),
                PathAndQuery::try_from(path).unwrap(),
                codec,
            )
            .await
        }
    };
    let status = call("/made.Up/First".into()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let before = series(&metrics);
    for i in 0..CALLS {
        let path = format!("/x{i}.{}/M{i}", "S".repeat(200));
        let status = call(path).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
    let after = series(&metrics);
    let text = metrics.render();
    assert_eq!(
        after,
        before,
        "{CALLS} made-up paths added {} series",
        after - before
    );
    assert!(!text.contains("x9999"), "a made-up path became a label");
    println!("{CALLS} denied calls to made-up paths: {before} server series before, {after} after");
    assert!(text.contains(r#"grpc_service="unknown",grpc_method="unknown""#));
    // A served method keeps its own labels.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(server.channel().await.unwrap());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert!(
        metrics
            .render()
            .contains(r#"grpc_service="grpc.health.v1.Health",grpc_method="Check""#)
    );
    grpc.ready().await.unwrap();
    server.stop().await.unwrap();
}
