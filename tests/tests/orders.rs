//! Orders end to end on the whole mesh (two instances each of inventory,
//! payments and orders over mTLS with the shipped policies): placing,
//! reading, listing, rejecting with compensation, cancelling, replays, and
//! who may call what. Every test ends by checking the mesh's invariants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use weft_mesh::ClientOptions;
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::orders::v1 as pb;
use weft_proto::payments::v1 as payments_pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_tests::TestDb;
use weft_tests::mesh::{Mesh, eur, order_request, placed};

fn status(order: &pb::Order) -> pb::OrderStatus {
    order.status()
}

fn rejection(order: &pb::Order) -> pb::RejectionCode {
    order
        .rejection
        .as_ref()
        .map(|r| r.code())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_placed_end_to_end_and_read_back() {
    let mesh = Mesh::start().await.unwrap();
    mesh.product("BOOK-1", 1250, 10).await.unwrap();
    mesh.product("PEN-1", 199, 10).await.unwrap();
    let account = mesh.open_account("alice", 10_000).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();

    let request = order_request("o-1", "alice", &account, &[("BOOK-1", 2), ("PEN-1", 3)]);
    let order = placed(&mut orders, request.clone()).await;
    assert_eq!(status(&order), pb::OrderStatus::Confirmed, "{order:?}");
    assert_eq!(order.total, Some(eur(2 * 1250 + 3 * 199)));
    assert_eq!(order.lines[0].unit_price, Some(eur(1250)));
    assert_eq!(order.lines[1].line_total, Some(eur(597)));
    assert!(order.rejection.is_none());

    // Read back, alone and in a list.
    let read = orders
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(read, order);
    // The money moved and the stock is sold.
    assert_eq!(mesh.balance(&account).await.unwrap(), (10_000 - 3097, 0));
    assert_eq!(
        mesh.balance(&mesh.merchant_account_id).await.unwrap(),
        (3097, 0)
    );
    assert_eq!(mesh.stock("BOOK-1").await.unwrap(), (8, 0, 2));

    // A replay answers with the same order and changes nothing; the key
    // with another request is refused.
    let replay = placed(&mut orders, request.clone()).await;
    assert_eq!(replay.order_id, order.order_id);
    assert_eq!(mesh.balance(&account).await.unwrap(), (10_000 - 3097, 0));
    let mut other = request.clone();
    other.lines[0].quantity = 1;
    let err = orders.place_order(other).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("idempotency_key"), "{err:?}");

    // Paginated listing, newest first.
    for n in 2..=3 {
        orders
            .place_order(order_request(
                &format!("o-{n}"),
                "alice",
                &account,
                &[("PEN-1", 1)],
            ))
            .await
            .unwrap();
    }
    let first = orders
        .list_orders(pb::ListOrdersRequest {
            customer_id: "alice".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.orders.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = orders
        .list_orders(pb::ListOrdersRequest {
            customer_id: "alice".into(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.orders.len(), 1);
    assert_eq!(second.orders[0].order_id, order.order_id, "oldest last");
    assert!(second.next_page_token.is_empty());
    let none = orders
        .list_orders(pb::ListOrdersRequest {
            customer_id: "bob".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.orders.is_empty());

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reject_with_a_reason_and_leave_nothing_held() {
    let mesh = Mesh::start().await.unwrap();
    mesh.product("LAMP-1", 5000, 3).await.unwrap();
    let poor = mesh.open_account("poor", 4999).await.unwrap();
    let rich = mesh.open_account("rich", 1_000_000).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();
    let mut place = async |key: &str, account: &str, lines: &[(&str, i64)]| {
        placed(&mut orders, order_request(key, "carol", account, lines)).await
    };

    // More than is in stock: nothing was reserved, nothing to compensate.
    let order = place("r-1", &rich, &[("LAMP-1", 4)]).await;
    assert_eq!(status(&order), pb::OrderStatus::Rejected);
    assert_eq!(rejection(&order), pb::RejectionCode::OutOfStock);
    assert!(order.rejection.as_ref().unwrap().message.contains("LAMP-1"));

    // A declined payment releases the reserved stock.
    let order = place("r-2", &poor, &[("LAMP-1", 1)]).await;
    assert_eq!(status(&order), pb::OrderStatus::Rejected, "{order:?}");
    assert_eq!(rejection(&order), pb::RejectionCode::PaymentDeclined);
    assert!(
        order
            .rejection
            .as_ref()
            .unwrap()
            .message
            .contains("insufficient funds")
    );
    assert_eq!(mesh.stock("LAMP-1").await.unwrap(), (3, 0, 0));
    assert_eq!(mesh.balance(&poor).await.unwrap(), (4999, 0));

    // Unknown product and unknown account.
    let order = place("r-3", &rich, &[("NOPE-1", 1)]).await;
    assert_eq!(rejection(&order), pb::RejectionCode::UnknownProduct);
    let order = place(
        "r-4",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        &[("LAMP-1", 1)],
    )
    .await;
    assert_eq!(rejection(&order), pb::RejectionCode::UnknownAccount);
    assert_eq!(mesh.stock("LAMP-1").await.unwrap(), (3, 0, 0));

    // The stock is there for the next order.
    let order = place("r-5", &rich, &[("LAMP-1", 3)]).await;
    assert_eq!(status(&order), pb::OrderStatus::Confirmed);

    // Bad input is INVALID_ARGUMENT naming the field, and records nothing.
    let cases: Vec<(pb::PlaceOrderRequest, &str)> = vec![
        (
            order_request("", "c", &rich, &[("A", 1)]),
            "idempotency_key",
        ),
        (order_request("k", "", &rich, &[("A", 1)]), "customer_id"),
        (
            order_request("k", "c", "acct", &[("A", 1)]),
            "payment_account_id",
        ),
        (order_request("k", "c", &rich, &[]), "lines"),
        (
            order_request("k", "c", &rich, &[("A", 0)]),
            "lines[0].quantity",
        ),
        (
            order_request("k", "c", &rich, &[("A", 1), ("A b", 1)]),
            "lines[1].sku",
        ),
        (
            order_request("k", "c", &rich, &[("A", 1), ("A", 1)]),
            "lines[1].sku",
        ),
    ];
    for (request, field) in cases {
        let err = orders.place_order(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    let err = orders
        .get_order(pb::GetOrderRequest {
            order_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = orders
        .list_orders(pb::ListOrdersRequest {
            customer_id: String::new(),
            page_size: 0,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("page_token"));

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_confirmed_order_refunds_and_restocks() {
    let mesh = Mesh::start().await.unwrap();
    mesh.product("CHAIR-1", 2500, 5).await.unwrap();
    let account = mesh.open_account("dave", 10_000).await.unwrap();
    let poor = mesh.open_account("erin", 10).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();
    let order = placed(
        &mut orders,
        order_request("c-1", "dave", &account, &[("CHAIR-1", 2)]),
    )
    .await;
    assert_eq!(status(&order), pb::OrderStatus::Confirmed);
    let cancel = pb::CancelOrderRequest {
        idempotency_key: "cancel-1".into(),
        order_id: order.order_id.clone(),
        reason: "changed my mind".into(),
    };
    let cancelled = orders
        .cancel_order(cancel.clone())
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        status(&cancelled),
        pb::OrderStatus::Cancelled,
        "{cancelled:?}"
    );
    assert_eq!(mesh.balance(&account).await.unwrap(), (10_000, 0));
    assert_eq!(
        mesh.balance(&mesh.merchant_account_id).await.unwrap(),
        (0, 0)
    );
    assert_eq!(mesh.stock("CHAIR-1").await.unwrap(), (5, 0, 0));
    // Cancelling again changes nothing.
    let again = orders
        .cancel_order(cancel)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(status(&again), pb::OrderStatus::Cancelled);
    assert_eq!(mesh.balance(&account).await.unwrap(), (10_000, 0));

    // A rejected order cannot be cancelled: it holds nothing.
    let rejected = placed(
        &mut orders,
        order_request("c-2", "erin", &poor, &[("CHAIR-1", 1)]),
    )
    .await;
    assert_eq!(status(&rejected), pb::OrderStatus::Rejected);
    let err = orders
        .cancel_order(pb::CancelOrderRequest {
            idempotency_key: "cancel-2".into(),
            order_id: rejected.order_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_orders_may_reserve_stock_and_move_money() {
    let mesh = Mesh::start().await.unwrap();
    mesh.product("CUP-1", 300, 5).await.unwrap();
    let account = mesh.open_account("frank", 1000).await.unwrap();

    // The operator may read but not reserve or authorize.
    let mut inventory = mesh.inventory().await.unwrap();
    let reserve = inventory_pb::ReserveStockRequest {
        idempotency_key: "reserve-1".into(),
        order_id: "o".into(),
        lines: vec![inventory_pb::ReservationLineRequest {
            sku: "CUP-1".into(),
            quantity: 1,
        }],
    };
    let err = inventory.reserve_stock(reserve.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    inventory
        .get_stock(inventory_pb::GetStockRequest {
            skus: vec!["CUP-1".into()],
        })
        .await
        .unwrap();
    let mut payments = mesh.payments().await.unwrap();
    let authorize = payments_pb::AuthorizeRequest {
        idempotency_key: "auth-1".into(),
        account_id: account.clone(),
        amount: Some(eur(100)),
        reference: "o".into(),
    };
    let err = payments.authorize(authorize.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    payments
        .get_ledger_totals(payments_pb::GetLedgerTotalsRequest {})
        .await
        .unwrap();

    // The orders identity may; and may not create products.
    let as_orders =
        |service| mesh.channel_as(service, mesh.orders_identity(), ClientOptions::default());
    let mut inventory = InventoryServiceClient::new(as_orders("inventory").await.unwrap());
    let reservation = inventory
        .reserve_stock(reserve)
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    inventory
        .release_reservation(inventory_pb::ReleaseReservationRequest {
            idempotency_key: "release-1".into(),
            reservation_id: reservation.reservation_id,
        })
        .await
        .unwrap();
    let err = inventory
        .create_product(inventory_pb::CreateProductRequest {
            idempotency_key: "p".into(),
            sku: "X".into(),
            name: "X".into(),
            unit_price: Some(eur(1)),
            initial_stock: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut payments = PaymentsServiceClient::new(as_orders("payments").await.unwrap());
    let auth = payments
        .authorize(authorize)
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    payments
        .void(payments_pb::VoidRequest {
            idempotency_key: "void-1".into(),
            authorization_id: auth.authorization_id,
        })
        .await
        .unwrap();

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_waits_out_an_outage_of_payments_and_then_completes() {
    let mut mesh = Mesh::start().await.unwrap();
    mesh.product("DESK-1", 10_000, 2).await.unwrap();
    let account = mesh.open_account("gina", 50_000).await.unwrap();
    mesh.stop_all("payments").await.unwrap();

    // With payments gone the order cannot finish; PlaceOrder answers with it
    // PENDING once its wait is over, holding the reservation.
    let mut orders = mesh.orders().await.unwrap();
    let mut request = tonic::Request::new(order_request("w-1", "gina", &account, &[("DESK-1", 1)]));
    request.set_timeout(Duration::from_secs(2));
    let order = placed(&mut orders, request).await;
    assert_eq!(status(&order), pb::OrderStatus::Pending, "{order:?}");
    assert_eq!(mesh.stock("DESK-1").await.unwrap(), (1, 1, 0));

    // Payments comes back: the recovery loop finishes the order.
    mesh.add("payments").await.unwrap();
    mesh.wait_for_endpoints("payments", 1).await.unwrap();
    mesh.wait_settled(Duration::from_secs(20)).await.unwrap();
    let order = orders
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id,
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(status(&order), pb::OrderStatus::Confirmed, "{order:?}");
    assert_eq!(mesh.stock("DESK-1").await.unwrap(), (1, 0, 1));

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_capture_after_the_sale_voids_and_returns_the_stock() {
    // Orders pays into a USD account: the capture of an EUR payment is
    // refused after the stock was already sold, so the saga must void the
    // hold and return (not release) the stock.
    let mut mesh = Mesh::without_orders().await.unwrap();
    let usd = mesh
        .payments()
        .await
        .unwrap()
        .open_account(payments_pb::OpenAccountRequest {
            idempotency_key: "merchant-usd".into(),
            owner: "merchant-usd".into(),
            currency_code: "USD".into(),
            credit_limit_minor: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .account_id;
    mesh.merchant_account_id = usd;
    mesh.add_orders(2).await.unwrap();
    mesh.product("VASE-1", 800, 3).await.unwrap();
    let account = mesh.open_account("ines", 10_000).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();
    let order = placed(
        &mut orders,
        order_request("x-1", "ines", &account, &[("VASE-1", 2)]),
    )
    .await;
    assert_eq!(status(&order), pb::OrderStatus::Rejected, "{order:?}");
    assert_eq!(rejection(&order), pb::RejectionCode::Failed);
    assert!(
        order.rejection.as_ref().unwrap().message.contains("USD"),
        "{order:?}"
    );
    // Sold, then returned: all three back on the shelf; the hold lifted.
    assert_eq!(mesh.stock("VASE-1").await.unwrap(), (3, 0, 0));
    assert_eq!(mesh.balance(&account).await.unwrap(), (10_000, 0));
    let db = mesh.db.connect().await.unwrap();
    let reservation: String = db
        .query_one(
            "SELECT status FROM inventory.reservations WHERE order_id = $1",
            &[&order.order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reservation, "RETURNED");
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_callers_use_of_a_saga_key_breaks_neither_the_order_nor_its_cancellation() {
    let mesh = Mesh::start().await.unwrap();
    mesh.product("LAMP-1", 1500, 5).await.unwrap();
    let account = mesh.open_account("gina", 10_000).await.unwrap();
    let own = mesh.open_account("mallory", 0).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();
    let order = placed(
        &mut orders,
        order_request("h-1", "gina", &account, &[("LAMP-1", 1)]),
    )
    .await;
    assert_eq!(status(&order), pb::OrderStatus::Confirmed);

    // An operator who may deposit and adjust stock reads the order's id and
    // takes the keys the cancellation's steps will use, on other methods.
    let id = &order.order_id;
    let mut payments = mesh.payments().await.unwrap();
    payments
        .deposit(payments_pb::DepositRequest {
            idempotency_key: format!("order/{id}/refund"),
            account_id: own.clone(),
            amount: Some(eur(1)),
        })
        .await
        .unwrap();
    let mut inventory = mesh.inventory().await.unwrap();
    inventory
        .adjust_stock(inventory_pb::AdjustStockRequest {
            idempotency_key: format!("order/{id}/restock"),
            sku: "LAMP-1".into(),
            delta: 1,
            reason: "taking the key".into(),
        })
        .await
        .unwrap();

    // The cancellation still refunds and restocks, and finishes.
    let cancelled = tokio::time::timeout(
        Duration::from_secs(30),
        orders.cancel_order(pb::CancelOrderRequest {
            idempotency_key: "cancel-h-1".into(),
            order_id: id.clone(),
            reason: String::new(),
        }),
    )
    .await
    .expect("the cancellation did not finish")
    .unwrap()
    .into_inner()
    .order
    .unwrap();
    assert_eq!(
        status(&cancelled),
        pb::OrderStatus::Cancelled,
        "{cancelled:?}"
    );
    assert_eq!(mesh.balance(&account).await.unwrap(), (10_000, 0));
    assert_eq!(mesh.balance(&own).await.unwrap(), (1, 0));
    // 5 on hand, one sold and returned, one added by the operator.
    assert_eq!(mesh.stock("LAMP-1").await.unwrap(), (6, 0, 0));
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

/// A store on `db` (migrated) holding one order, placed and leased to
/// `owner`, with no service running.
async fn placed_in_store(
    db: &TestDb,
    owner: &str,
    lease: Duration,
) -> (weft_orders::store::Store, weft_orders::domain::Order) {
    let cfg = weft_tests::inventory::config(db, weft_service::Transport::Plaintext);
    weft_service::migrate(&cfg, weft_orders::server::migrations(), "orders")
        .await
        .unwrap();
    let store = weft_orders::store::Store::new(&cfg).unwrap();
    let request = order_request("stuck", "hal", "account", &[("X-1", 1)]);
    let key = weft_service::IdempotencyKey::of("caller", "PlaceOrder", &request, "stuck", |r| {
        r.idempotency_key.clear()
    })
    .unwrap();
    let new = weft_orders::domain::NewOrder {
        customer_id: "hal".into(),
        payment_account_id: "account".into(),
        lines: vec![weft_orders::domain::OrderLine {
            sku: "X-1".into(),
            quantity: 1,
            unit_price: None,
        }],
    };
    let (order, _) = store.place(&key, &new, owner, lease).await.unwrap();
    (store, order)
}

/// The instance that begins a cancellation holds the saga from the same
/// commit: a recovery loop (on any instance, every 100 ms in these tests)
/// cannot take it in between and leave the caller answered with the order
/// still CONFIRMED. A repeat while it is held drives nothing.
#[tokio::test]
async fn a_cancellation_is_leased_to_the_instance_that_began_it() {
    let db = TestDb::create().await.unwrap();
    let lease = Duration::from_secs(30);
    let (store, order) = placed_in_store(&db, "placer", lease).await;
    // Settled as confirmed, its lease let go, as a saga leaves it.
    db.connect()
        .await
        .unwrap()
        .execute(
            "UPDATE orders.orders SET status = 'CONFIRMED', step = 'DONE', \
             lease_owner = NULL, lease_until = NULL WHERE order_id = $1",
            &[&order.order_id],
        )
        .await
        .unwrap();
    let (cancelling, leased) = store
        .begin_cancel(&order.order_id, "changed my mind", "api", lease)
        .await
        .unwrap();
    assert!(leased);
    assert_eq!(cancelling.step, weft_orders::domain::Step::Refund);
    assert!(
        store.due(100).await.unwrap().is_empty(),
        "recovery sees the cancellation as free to take"
    );
    assert!(
        store
            .claim(&order.order_id, "recovery", lease)
            .await
            .unwrap()
            .is_none()
    );
    let (_, again) = store
        .begin_cancel(&order.order_id, "", "other", lease)
        .await
        .unwrap();
    assert!(!again, "a repeat took the lease of the one driving");
    // Its driver goes on with it.
    assert!(
        store
            .claim(&order.order_id, "api", lease)
            .await
            .unwrap()
            .is_some()
    );
}

/// A step that keeps failing (a compensation waiting for an operator)
/// retries for as long as it takes; its retries are logged at attempts 1,
/// 2, 4, 8, …, so the saga log grows with the logarithm of the retries.
#[tokio::test]
async fn a_step_that_keeps_failing_logs_its_retries_at_powers_of_two() {
    let db = TestDb::create().await.unwrap();
    let lease = Duration::from_secs(30);
    let (store, mut order) = placed_in_store(&db, "driver", lease).await;
    for _ in 0..100 {
        store
            .retry_later(&order, "driver", Duration::ZERO, "RESERVE: Unavailable")
            .await
            .unwrap();
        order = store
            .claim(&order.order_id, "driver", lease)
            .await
            .unwrap()
            .unwrap();
    }
    let client = db.connect().await.unwrap();
    let logged: Vec<String> = client
        .query(
            "SELECT detail FROM orders.saga_log WHERE order_id = $1 AND from_step = to_step \
             ORDER BY entry_id",
            &[&order.order_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = [1, 2, 4, 8, 16, 32, 64]
        .iter()
        .map(|n| format!("RESERVE: Unavailable (attempt {n})"))
        .collect();
    assert_eq!(logged, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_database_per_service_orders_settle_and_the_invariants_relate_them() {
    let mut mesh = Mesh::without_orders_apart(true).await.unwrap();
    mesh.add_orders(2).await.unwrap();
    // Each service's state is in its own database, and only there.
    for (service, db) in mesh.databases() {
        let db = db.connect().await.unwrap();
        for schema in ["orders", "inventory", "payments"] {
            let present: bool = db
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                    &[&schema],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                present,
                schema == service,
                "{schema} in {service}'s database"
            );
        }
    }
    mesh.product("BOOK-1", 1250, 1).await.unwrap();
    let account = mesh.open_account("alice", 10_000).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();
    let sold = placed(
        &mut orders,
        order_request("a-1", "alice", &account, &[("BOOK-1", 1)]),
    )
    .await;
    assert_eq!(status(&sold), pb::OrderStatus::Confirmed, "{sold:?}");
    let none_left = placed(
        &mut orders,
        order_request("a-2", "alice", &account, &[("BOOK-1", 1)]),
    )
    .await;
    assert_eq!(rejection(&none_left), pb::RejectionCode::OutOfStock);
    mesh.check_invariants().await.unwrap();

    // An order that claims a sale nothing in inventory or payments shows
    // is caught, though its effects live in other databases.
    mesh.db
        .connect()
        .await
        .unwrap()
        .batch_execute(&format!(
            "UPDATE orders.orders SET status = 'CONFIRMED', step = 'DONE', total_minor = 0 \
             WHERE order_id = '{}'",
            none_left.order_id
        ))
        .await
        .unwrap();
    let err = mesh.check_invariants().await.unwrap_err().to_string();
    assert!(
        err.contains("disagree") && err.contains(&none_left.order_id),
        "{err}"
    );
    mesh.stop().await.unwrap();
}
