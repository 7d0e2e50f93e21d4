//! End-to-end tests of the inventory service against real PostgreSQL: every
//! RPC, validation, idempotency, concurrency, health and restarts.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use weft_proto::inventory::v1 as pb;
use weft_proto::money::v1::Money;
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, stock_of};

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "USD".into(),
    })
}

fn create(key: &str, sku: &str, stock: i64) -> pb::CreateProductRequest {
    pb::CreateProductRequest {
        idempotency_key: key.into(),
        sku: sku.into(),
        name: format!("Product {sku}"),
        unit_price: usd(1250),
        initial_stock: stock,
    }
}

fn line(sku: &str, quantity: i64) -> pb::ReservationLineRequest {
    pb::ReservationLineRequest {
        sku: sku.into(),
        quantity,
    }
}

fn reserve(
    key: &str,
    order: &str,
    lines: Vec<pb::ReservationLineRequest>,
) -> pb::ReserveStockRequest {
    pb::ReserveStockRequest {
        idempotency_key: key.into(),
        order_id: order.into(),
        lines,
    }
}

/// Every unit received is available, reserved or sold: checked in the database.
async fn assert_stock_conserved(db: &TestDb) {
    let client = db.connect().await.unwrap();
    let rows = client
        .query(
            "SELECT p.sku, p.available + p.reserved + p.sold, \
                    (SELECT coalesce(sum(delta), 0)::bigint FROM inventory.stock_movements m \
                     WHERE m.sku = p.sku AND m.kind IN ('create', 'adjust')) \
             FROM inventory.products p",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let (sku, counted, received): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(counted, received, "stock of {sku} is not conserved");
    }
}

#[tokio::test]
async fn products_are_created_read_and_listed_in_pages() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();

    let created = client
        .create_product(create("k-a", "SKU-A", 5))
        .await
        .unwrap()
        .into_inner();
    let product = created.product.unwrap();
    assert_eq!(product.sku, "SKU-A");
    assert_eq!(product.name, "Product SKU-A");
    assert_eq!(product.unit_price, usd(1250));
    assert!(product.create_time.is_some());
    assert_eq!(created.stock.unwrap().available, 5);

    for i in 0..5 {
        client
            .create_product(create(&format!("k-{i}"), &format!("SKU-P{i}"), i))
            .await
            .unwrap();
    }
    let got = client
        .get_product(pb::GetProductRequest {
            sku: "SKU-P3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.product.unwrap().sku, "SKU-P3");
    assert_eq!(got.stock.unwrap().available, 3);

    // Pages of two over six products: 2 + 2 + 2, in SKU order, then no token.
    let mut skus = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_products(pb::ListProductsRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.products.len() <= 2);
        skus.extend(page.products.into_iter().map(|p| p.sku));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        skus,
        ["SKU-A", "SKU-P0", "SKU-P1", "SKU-P2", "SKU-P3", "SKU-P4"]
    );

    let err = client
        .create_product(create("k-dup", "SKU-A", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    server.stop().await.unwrap();
    assert_stock_conserved(&db).await;
}

#[tokio::test]
async fn stock_is_adjusted_and_read() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.create_product(create("c1", "S1", 10)).await.unwrap();
    client.create_product(create("c2", "S2", 0)).await.unwrap();

    let adjusted = client
        .adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "a1".into(),
            sku: "S2".into(),
            delta: 7,
            reason: "delivery".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(adjusted.stock.unwrap().available, 7);
    let written_off = client
        .adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "a2".into(),
            sku: "S1".into(),
            delta: -4,
            reason: "damaged".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written_off.stock.unwrap().available, 6);

    let err = client
        .adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "a3".into(),
            sku: "S1".into(),
            delta: -7,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let levels = client
        .get_stock(pb::GetStockRequest {
            skus: vec!["S2".into(), "S1".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .stock;
    assert_eq!(
        levels
            .iter()
            .map(|l| (l.sku.as_str(), l.available))
            .collect::<Vec<_>>(),
        [("S2", 7), ("S1", 6)]
    );
    server.stop().await.unwrap();
    assert_stock_conserved(&db).await;
}

#[tokio::test]
async fn reservations_commit_release_and_return() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.create_product(create("c1", "A", 10)).await.unwrap();
    client.create_product(create("c2", "B", 10)).await.unwrap();

    let held = client
        .reserve_stock(reserve("r1", "order-1", vec![line("B", 2), line("A", 3)]))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(held.status(), pb::ReservationStatus::Held);
    assert_eq!(held.order_id, "order-1");
    assert_eq!(
        held.lines
            .iter()
            .map(|l| (l.sku.as_str(), l.quantity))
            .collect::<Vec<_>>(),
        [("B", 2), ("A", 3)],
        "lines keep the order they were asked in"
    );
    assert_eq!(held.lines[0].unit_price, usd(1250));
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved, a.sold), (7, 3, 0));

    let committed = client
        .commit_reservation(pb::CommitReservationRequest {
            idempotency_key: "cm1".into(),
            reservation_id: held.reservation_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(committed.status(), pb::ReservationStatus::Committed);
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved, a.sold), (7, 0, 3));

    // A committed reservation cannot be released, but can be returned.
    let err = client
        .release_reservation(pb::ReleaseReservationRequest {
            idempotency_key: "rl1".into(),
            reservation_id: held.reservation_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let returned = client
        .return_reservation(pb::ReturnReservationRequest {
            idempotency_key: "rt1".into(),
            reservation_id: held.reservation_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(returned.status(), pb::ReservationStatus::Returned);
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved, a.sold), (10, 0, 0));

    // Hold and release.
    let second = client
        .reserve_stock(reserve("r2", "order-2", vec![line("A", 4)]))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    let released = client
        .release_reservation(pb::ReleaseReservationRequest {
            idempotency_key: "rl2".into(),
            reservation_id: second.reservation_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(released.status(), pb::ReservationStatus::Released);
    // Releasing again under a new key is a no-op success: compensations repeat.
    let again = client
        .release_reservation(pb::ReleaseReservationRequest {
            idempotency_key: "rl3".into(),
            reservation_id: second.reservation_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(again.status(), pb::ReservationStatus::Released);
    let err = client
        .commit_reservation(pb::CommitReservationRequest {
            idempotency_key: "cm2".into(),
            reservation_id: second.reservation_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let fetched = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: second.reservation_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(fetched.status(), pb::ReservationStatus::Released);
    assert_eq!(fetched.lines.len(), 1);
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved, a.sold), (10, 0, 0));

    server.stop().await.unwrap();
    assert_stock_conserved(&db).await;
}

#[tokio::test]
async fn a_reservation_is_all_or_nothing() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.create_product(create("c1", "A", 10)).await.unwrap();
    client.create_product(create("c2", "B", 1)).await.unwrap();

    let err = client
        .reserve_stock(reserve("r1", "o1", vec![line("A", 5), line("B", 2)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("insufficient stock for \"B\""),
        "{}",
        err.message()
    );
    let err = client
        .reserve_stock(reserve("r2", "o1", vec![line("A", 5), line("NOPE", 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("NOPE"));

    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved), (10, 0), "nothing stays held");

    // The refusal is its key's answer even once stock arrives; the request
    // under a new key succeeds.
    client
        .adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "a1".into(),
            sku: "B".into(),
            delta: 1,
            reason: String::new(),
        })
        .await
        .unwrap();
    let again = client
        .reserve_stock(reserve("r1", "o1", vec![line("A", 5), line("B", 2)]))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    client
        .reserve_stock(reserve("r3", "o1", vec![line("A", 5), line("B", 2)]))
        .await
        .unwrap();
    server.stop().await.unwrap();
    assert_stock_conserved(&db).await;
}

#[tokio::test]
async fn unknown_things_are_not_found() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();

    let err = client
        .get_product(pb::GetProductRequest { sku: "NOPE".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_stock(pb::GetStockRequest {
            skus: vec!["NOPE".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "a".into(),
            sku: "NOPE".into(),
            delta: 1,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let missing = "00000000-0000-4000-8000-000000000000";
    let err = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: missing.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .commit_reservation(pb::CommitReservationRequest {
            idempotency_key: "c".into(),
            reservation_id: missing.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await.unwrap();
}

/// Each case: the call, and the field its INVALID_ARGUMENT message must name.
#[tokio::test]
async fn invalid_input_is_refused_naming_the_field() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.create_product(create("seed", "A", 5)).await.unwrap();
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";

    let mut cases: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
    macro_rules! case {
        ($field:expr, $call:expr) => {
            cases.push(($field, $call.await.map(|_| ())));
        };
    }
    case!("idempotency_key", client.create_product(create("", "B", 1)));
    case!(
        "idempotency_key",
        client.create_product(create(&"k".repeat(129), "B", 1))
    );
    case!("sku", client.create_product(create("k1", "", 1)));
    case!("sku", client.create_product(create("k1", "bad sku", 1)));
    case!(
        "name",
        client.create_product(pb::CreateProductRequest {
            name: " ".into(),
            ..create("k1", "B", 1)
        })
    );
    case!(
        "unit_price",
        client.create_product(pb::CreateProductRequest {
            unit_price: None,
            ..create("k1", "B", 1)
        })
    );
    case!(
        "unit_price.amount_minor",
        client.create_product(pb::CreateProductRequest {
            unit_price: usd(-1),
            ..create("k1", "B", 1)
        })
    );
    case!(
        "unit_price.currency_code",
        client.create_product(pb::CreateProductRequest {
            unit_price: Some(Money {
                amount_minor: 1,
                currency_code: "usd".into()
            }),
            ..create("k1", "B", 1)
        })
    );
    case!(
        "initial_stock",
        client.create_product(create("k1", "B", -1))
    );
    case!(
        "sku",
        client.get_product(pb::GetProductRequest { sku: String::new() })
    );
    case!(
        "page_size",
        client.list_products(pb::ListProductsRequest {
            page_size: 501,
            page_token: String::new()
        })
    );
    case!(
        "page_size",
        client.list_products(pb::ListProductsRequest {
            page_size: -1,
            page_token: String::new()
        })
    );
    case!(
        "page_token",
        client.list_products(pb::ListProductsRequest {
            page_size: 0,
            page_token: "garbage".into()
        })
    );
    case!(
        "skus",
        client.get_stock(pb::GetStockRequest { skus: vec![] })
    );
    case!(
        "skus[1]",
        client.get_stock(pb::GetStockRequest {
            skus: vec!["A".into(), "A".into()]
        })
    );
    case!(
        "skus[0]",
        client.get_stock(pb::GetStockRequest {
            skus: vec!["a b".into()]
        })
    );
    case!(
        "delta",
        client.adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "k".into(),
            sku: "A".into(),
            delta: 0,
            reason: String::new()
        })
    );
    case!(
        "reason",
        client.adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "k".into(),
            sku: "A".into(),
            delta: 1,
            reason: "x".repeat(201)
        })
    );
    case!(
        "order_id",
        client.reserve_stock(reserve("k", "", vec![line("A", 1)]))
    );
    case!("lines", client.reserve_stock(reserve("k", "o", vec![])));
    case!(
        "lines",
        client.reserve_stock(reserve(
            "k",
            "o",
            (0..101).map(|i| line(&format!("S{i}"), 1)).collect()
        ))
    );
    case!(
        "lines[0].quantity",
        client.reserve_stock(reserve("k", "o", vec![line("A", 0)]))
    );
    case!(
        "lines[0].quantity",
        client.reserve_stock(reserve("k", "o", vec![line("A", 1_000_001)]))
    );
    case!(
        "lines[1].sku",
        client.reserve_stock(reserve("k", "o", vec![line("A", 1), line("", 1)]))
    );
    case!(
        "lines[1].sku",
        client.reserve_stock(reserve("k", "o", vec![line("A", 1), line("A", 1)]))
    );
    case!(
        "reservation_id",
        client.commit_reservation(pb::CommitReservationRequest {
            idempotency_key: "k".into(),
            reservation_id: "x".into()
        })
    );
    case!(
        "idempotency_key",
        client.commit_reservation(pb::CommitReservationRequest {
            idempotency_key: String::new(),
            reservation_id: id.into()
        })
    );
    case!(
        "reservation_id",
        client.release_reservation(pb::ReleaseReservationRequest {
            idempotency_key: "k".into(),
            reservation_id: String::new()
        })
    );
    case!(
        "reservation_id",
        client.return_reservation(pb::ReturnReservationRequest {
            idempotency_key: "k".into(),
            reservation_id: "nope".into()
        })
    );
    case!(
        "reservation_id",
        client.get_reservation(pb::GetReservationRequest {
            reservation_id: "nope".into()
        })
    );

    for (field, result) in cases {
        let err = result.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "message {:?} should name {field}",
            err.message()
        );
    }
    // Nothing changed.
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved, a.sold), (5, 0, 0));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn replays_return_the_first_result_and_conflicts_are_refused() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();

    let first = client
        .create_product(create("p", "A", 10))
        .await
        .unwrap()
        .into_inner();
    let replay = client
        .create_product(create("p", "A", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first, replay,
        "a replayed create returns the first response, not ALREADY_EXISTS"
    );

    let adjust = pb::AdjustStockRequest {
        idempotency_key: "adj".into(),
        sku: "A".into(),
        delta: 5,
        reason: "delivery".into(),
    };
    let first = client
        .adjust_stock(adjust.clone())
        .await
        .unwrap()
        .into_inner();
    let replay = client
        .adjust_stock(adjust.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, replay);
    assert_eq!(
        stock_of(&mut client, "A").await.unwrap().available,
        15,
        "applied once"
    );

    let held = client
        .reserve_stock(reserve("res", "o1", vec![line("A", 4)]))
        .await
        .unwrap()
        .into_inner();
    let replayed = client
        .reserve_stock(reserve("res", "o1", vec![line("A", 4)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held, replayed);
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved), (11, 4), "reserved once");

    let reservation_id = held.reservation.unwrap().reservation_id;
    let commit = pb::CommitReservationRequest {
        idempotency_key: "commit".into(),
        reservation_id: reservation_id.clone(),
    };
    let first = client
        .commit_reservation(commit.clone())
        .await
        .unwrap()
        .into_inner();
    let replay = client
        .commit_reservation(commit)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, replay);
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!(
        (a.available, a.reserved, a.sold),
        (11, 0, 4),
        "committed once"
    );

    // The same keys with different requests are refused and change nothing.
    let conflicts = [
        client
            .create_product(create("p", "B", 10))
            .await
            .map(|_| ()),
        client
            .adjust_stock(pb::AdjustStockRequest { delta: 6, ..adjust })
            .await
            .map(|_| ()),
        client
            .reserve_stock(reserve("res", "o1", vec![line("A", 5)]))
            .await
            .map(|_| ()),
    ];
    for result in conflicts {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("idempotency_key"),
            "{}",
            err.message()
        );
    }
    // A key belongs to its method: on another method it is a call of its
    // own (here refused by the domain, a committed reservation cannot be
    // released, not by the key).
    let err = client
        .release_reservation(pb::ReleaseReservationRequest {
            idempotency_key: "commit".into(),
            reservation_id,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("cannot release"),
        "{}",
        err.message()
    );
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved, a.sold), (11, 0, 4));
    let err = client
        .get_product(pb::GetProductRequest { sku: "B".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await.unwrap();
    assert_stock_conserved(&db).await;
}

#[tokio::test]
async fn concurrent_replays_of_one_key_apply_once() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.create_product(create("p", "A", 100)).await.unwrap();

    let calls = (0..20).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .reserve_stock(reserve("same-key", "o1", vec![line("A", 3)]))
                .await
                .map(|r| r.into_inner())
        })
    });
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        let response = call.await.unwrap().unwrap();
        ids.insert(response.reservation.unwrap().reservation_id);
    }
    assert_eq!(ids.len(), 1, "every replay sees the one reservation");
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved), (97, 3));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fifty_concurrent_reservations_never_oversell_ten() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    client
        .create_product(create("p", "SCARCE", 10))
        .await
        .unwrap();
    client
        .create_product(create("q", "PLENTY", 1000))
        .await
        .unwrap();

    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                // Two lines in varying order also exercises lock ordering.
                let lines = if i % 2 == 0 {
                    vec![line("SCARCE", 1), line("PLENTY", 1)]
                } else {
                    vec![line("PLENTY", 1), line("SCARCE", 1)]
                };
                client
                    .reserve_stock(reserve(&format!("k{i}"), &format!("o{i}"), lines))
                    .await
            })
        })
        .collect();
    let (mut ok, mut short) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::FailedPrecondition => short += 1,
            Err(e) => panic!("unexpected failure: {e:?}"),
        }
    }
    assert_eq!((ok, short), (10, 40));
    let scarce = stock_of(&mut client, "SCARCE").await.unwrap();
    assert_eq!((scarce.available, scarce.reserved), (0, 10));
    let plenty = stock_of(&mut client, "PLENTY").await.unwrap();
    assert_eq!(
        (plenty.available, plenty.reserved),
        (990, 10),
        "failed reservations held nothing"
    );
    server.stop().await.unwrap();
    assert_stock_conserved(&db).await;
}

#[tokio::test]
async fn data_and_idempotency_survive_a_restart() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.create_product(create("p", "A", 10)).await.unwrap();
    let held = client
        .reserve_stock(reserve("r", "o", vec![line("A", 2)]))
        .await
        .unwrap()
        .into_inner();
    server.stop().await.unwrap();

    // A new server on the same database (migrations already applied).
    let server = Inventory::start(&db).await.unwrap();
    let mut client = server.client().await.unwrap();
    let a = stock_of(&mut client, "A").await.unwrap();
    assert_eq!((a.available, a.reserved), (8, 2));
    let replay = client
        .reserve_stock(reserve("r", "o", vec![line("A", 2)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held, replay);
    assert_eq!(stock_of(&mut client, "A").await.unwrap().reserved, 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let db = TestDb::create().await.unwrap();
    let (a, b, c) = tokio::join!(
        Inventory::start(&db),
        Inventory::start(&db),
        Inventory::start(&db)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let mut client = b.client().await.unwrap();
    client.create_product(create("p", "A", 1)).await.unwrap();
    let mut other = c.client().await.unwrap();
    assert_eq!(stock_of(&mut other, "A").await.unwrap().available, 1);
    for server in [a, b, c] {
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn health_follows_the_database() {
    let db = TestDb::create().await.unwrap();
    let mut server = Inventory::start(&db).await.unwrap();
    assert_eq!(server.health().await.unwrap(), ServingStatus::Serving);

    db.cut_off().await.unwrap();
    server
        .wait_for(ServingStatus::NotServing, Duration::from_secs(20))
        .await
        .unwrap();
    // Calls fail cleanly, without internal detail, while the database is away.
    let mut client = server.client().await.unwrap();
    let err = client
        .get_product(pb::GetProductRequest { sku: "A".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains("postgres"), "{}", err.message());

    db.restore().await.unwrap();
    server
        .wait_for(ServingStatus::Serving, Duration::from_secs(20))
        .await
        .unwrap();
    client.create_product(create("p", "A", 1)).await.unwrap();
    server.stop().await.unwrap();
}
