//! Orders crashing mid-saga: an orders process (a test build, with crash
//! points) aborts right after each saga step in turn, after that step's call
//! returned but before its outcome was recorded; a restarted instance must
//! resume or compensate every saga, with each effect once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_mesh::ClientOptions;
use weft_proto::orders::v1 as pb;
use weft_tests::mesh::{Mesh, order_request, placed};

/// Places an order on an orders process that crashes after `point`,
/// restarts it without the crash point, and returns the settled order.
async fn crash_and_resume(
    mesh: &mut Mesh,
    point: &str,
    request: pb::PlaceOrderRequest,
) -> pb::Order {
    let crashing = mesh
        .spawn_orders("orders-crash", &[("WEFT_FAULT_CRASH_AFTER", point)])
        .unwrap();
    mesh.wait_for_endpoints("orders", 1).await.unwrap();
    // One attempt: the client must see the crash, not retry past it.
    let options = ClientOptions {
        max_attempts: 1,
        ..ClientOptions::default()
    };
    let mut orders = mesh.orders_with(options).await.unwrap();
    let err = orders.place_order(request.clone()).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{point}: the call should have died with the process: {err:?}"
    );
    mesh.kill_process(crashing);

    // The same instance comes back (as a restarted task would) and resumes.
    let _restarted = mesh.spawn_orders("orders-crash", &[]).unwrap();
    mesh.wait_settled(Duration::from_secs(30)).await.unwrap();
    // The client's retry of the same call gets the same, settled order.
    let mut orders = mesh.orders().await.unwrap();
    let order = placed(&mut orders, request.clone()).await;
    let listed = orders
        .list_orders(pb::ListOrdersRequest {
            customer_id: request.customer_id.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(listed.len(), 1, "{point}: one order per key");
    assert_eq!(listed[0].order_id, order.order_id);
    mesh.kill_process(crashing + 1);
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_resumes_after_a_crash_after_any_step() {
    let mut mesh = Mesh::without_orders().await.unwrap();
    mesh.product("KETTLE-1", 3000, 100).await.unwrap();
    let rich = mesh.open_account("rich", 1_000_000).await.unwrap();
    let poor = mesh.open_account("poor", 100).await.unwrap();

    // Forward steps: the order ends CONFIRMED however far it got.
    for point in ["record", "reserve", "authorize", "commit", "capture"] {
        let request = order_request(
            &format!("crash-{point}"),
            &format!("customer-{point}"),
            &rich,
            &[("KETTLE-1", 2)],
        );
        let order = crash_and_resume(&mut mesh, point, request).await;
        assert_eq!(
            order.status(),
            pb::OrderStatus::Confirmed,
            "after a crash at {point}: {order:?}"
        );
        mesh.check_invariants().await.unwrap();
    }
    // A declined payment's compensation: the order ends REJECTED.
    for point in ["authorize", "release"] {
        let request = order_request(
            &format!("crash-declined-{point}"),
            &format!("customer-declined-{point}"),
            &poor,
            &[("KETTLE-1", 1)],
        );
        let order = crash_and_resume(&mut mesh, point, request).await;
        assert_eq!(
            order.status(),
            pb::OrderStatus::Rejected,
            "{point}: {order:?}"
        );
        assert_eq!(
            order.rejection.unwrap().code(),
            pb::RejectionCode::PaymentDeclined
        );
        mesh.check_invariants().await.unwrap();
    }
    // 2 units for each of 5 confirmed orders sold; the rest back in stock.
    assert_eq!(mesh.stock("KETTLE-1").await.unwrap(), (90, 0, 10));
    assert_eq!(
        mesh.balance(&mesh.merchant_account_id).await.unwrap(),
        (5 * 6000, 0)
    );
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_takes_over_a_crashed_instances_sagas() {
    let mut mesh = Mesh::without_orders().await.unwrap();
    mesh.product("TEAPOT-1", 4000, 10).await.unwrap();
    let account = mesh.open_account("hana", 100_000).await.unwrap();
    let crashing = mesh
        .spawn_orders("orders-a", &[("WEFT_FAULT_CRASH_AFTER", "reserve")])
        .unwrap();
    mesh.wait_for_endpoints("orders", 1).await.unwrap();
    let options = ClientOptions {
        max_attempts: 1,
        ..ClientOptions::default()
    };
    let mut orders = mesh.orders_with(options).await.unwrap();
    let request = order_request("take-over", "hana", &account, &[("TEAPOT-1", 1)]);
    orders.place_order(request).await.unwrap_err();
    mesh.kill_process(crashing);
    // A different instance: it must wait for the dead one's lease to run
    // out (2 s here), then its recovery loop finishes the order.
    mesh.add_orders(1).await.unwrap();
    mesh.wait_settled(Duration::from_secs(30)).await.unwrap();
    assert_eq!(mesh.stock("TEAPOT-1").await.unwrap(), (9, 0, 1));
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}
