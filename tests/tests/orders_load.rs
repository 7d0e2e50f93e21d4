//! 200 orders at once against limited stock and limited funds, through two
//! instances of every service: no oversell, no double charge, every order
//! CONFIRMED or REJECTED, and the invariants hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_proto::orders::v1 as pb;
use weft_tests::mesh::{Mesh, order_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_orders_never_oversell_or_double_charge() {
    let mut mesh = Mesh::without_orders().await.unwrap();
    mesh.pool_size = 8;
    mesh.add_orders(2).await.unwrap();
    // 3 products with 40 units each: 120 units for orders asking ~300.
    for sku in ["A-1", "B-1", "C-1"] {
        mesh.product(sku, 1000, 40).await.unwrap();
    }
    // 20 accounts; the odd ones can pay for a few orders only.
    let mut accounts = Vec::new();
    for n in 0..20 {
        let deposit = if n % 2 == 0 { 1_000_000 } else { 2500 };
        accounts.push(
            mesh.open_account(&format!("buyer-{n}"), deposit)
                .await
                .unwrap(),
        );
    }
    let orders = mesh.orders().await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..200usize {
        let mut orders = orders.clone();
        let account = accounts[n % accounts.len()].clone();
        let skus = ["A-1", "B-1", "C-1"];
        let lines: Vec<(&str, i64)> = if n % 3 == 0 {
            vec![(skus[n % 3], 1), (skus[(n + 1) % 3], 1)]
        } else {
            vec![(skus[n % 3], 1 + (n % 2) as i64)]
        };
        let request = order_request(
            &format!("load-{n}"),
            &format!("buyer-{}", n % 20),
            &account,
            &lines,
        );
        calls.spawn(async move {
            let mut request = tonic::Request::new(request);
            request.set_timeout(Duration::from_secs(30));
            orders.place_order(request).await
        });
    }
    let mut errors = Vec::new();
    while let Some(done) = calls.join_next().await {
        if let Err(status) = done.unwrap() {
            errors.push(status);
        }
    }
    assert!(errors.is_empty(), "calls failed: {errors:?}");
    mesh.wait_settled(Duration::from_secs(60)).await.unwrap();

    let db = mesh.db.connect().await.unwrap();
    let rows = db
        .query(
            "SELECT status, count(*) FROM orders.orders GROUP BY status",
            &[],
        )
        .await
        .unwrap();
    let count = |s: &str| {
        rows.iter()
            .find(|r| r.get::<_, &str>(0) == s)
            .map(|r| r.get::<_, i64>(1))
            .unwrap_or(0)
    };
    let (confirmed, rejected) = (count("CONFIRMED"), count("REJECTED"));
    println!("200 orders: {confirmed} confirmed, {rejected} rejected");
    assert_eq!(confirmed + rejected, 200, "{rows:?}");
    assert!(confirmed > 0 && rejected > 0, "both outcomes should occur");
    // Every unit sold belongs to a confirmed order's line; none oversold.
    let sold: i64 = db
        .query_one("SELECT sum(sold)::bigint FROM inventory.products", &[])
        .await
        .unwrap()
        .get(0);
    let ordered: i64 = db
        .query_one(
            "SELECT coalesce(sum(l.quantity), 0)::bigint FROM orders.order_lines l \
             JOIN orders.orders o USING (order_id) WHERE o.status = 'CONFIRMED'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sold, ordered);
    assert!(sold <= 120);
    let _ = pb::OrderStatus::Confirmed;
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}
