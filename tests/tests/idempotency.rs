//! Idempotency records belong to their caller and method: two callers (or
//! two methods) never collide on a key, while a true retry still gets the
//! first answer, a refusal included; records made before keys were scoped
//! keep answering true retries after the migration; and the sweeper deletes
//! records past the replay window, and only those.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::Code;
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::money::v1::Money;
use weft_service::{Db, IdempotencyKey};
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, config, mtls, stock_of};
use weft_tests::pki::TestPki;

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

fn adjust(key: &str, sku: &str) -> pb::AdjustStockRequest {
    pb::AdjustStockRequest {
        idempotency_key: key.into(),
        sku: sku.into(),
        delta: 1,
        reason: String::new(),
    }
}

#[tokio::test]
async fn a_key_belongs_to_its_caller_and_method() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    let cfg = config(
        &db,
        mtls(pki.service("inventory", "inventory").unwrap(), None),
    );
    let operator = pki.operator("operator-test", "test").unwrap();
    let server = Inventory::start_with(cfg, Some(operator), Some(pki.clone()))
        .await
        .unwrap();
    let client = |name: &str| {
        InventoryServiceClient::new(
            server
                .channel_as(pki.operator(name, name).unwrap())
                .unwrap(),
        )
    };
    let (mut alice, mut bob) = (client("alice"), client("bob"));

    // Alice creates a product with key k; Bob's AdjustStock with k, and his
    // own CreateProduct with k, are his own calls.
    alice.create_product(product("k", "A")).await.unwrap();
    bob.adjust_stock(adjust("k", "A")).await.unwrap();
    bob.create_product(product("k", "B")).await.unwrap();
    // Alice's AdjustStock with k is another method: a call of its own.
    alice.adjust_stock(adjust("k", "A")).await.unwrap();
    let stock = stock_of(&mut alice, "A").await.unwrap();
    assert_eq!(stock.available, 3, "each adjustment ran once");

    // A true retry gets the first answer; the same key with another request
    // from the same caller to the same method is still refused.
    let again = alice
        .adjust_stock(adjust("k", "A"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.stock.unwrap().available, 3, "the first answer");
    let now = stock_of(&mut alice, "A").await.unwrap();
    assert_eq!(now.available, 3, "the retry adjusted nothing");
    let other = alice.create_product(product("k", "C")).await.unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn records_from_before_the_migration_still_answer_a_retry_and_the_sweeper_ages_them_out() {
    let db = TestDb::create().await.unwrap();
    let pki = Arc::new(TestPki::new().unwrap());
    let cfg = config(
        &db,
        mtls(pki.service("inventory", "inventory").unwrap(), None),
    );

    // The schema as it was (V1), with a record the old code wrote: keyed
    // by the key alone, its response a product that exists nowhere else.
    let v1 = weft_inventory::server::migrations().set_target(refinery::Target::Version(1));
    weft_service::migrate(&cfg, v1, "inventory").await.unwrap();
    let request = product("old-key", "OLD-1");
    let legacy = IdempotencyKey::of("", "CreateProduct", &request, "old-key", |r| {
        r.idempotency_key.clear()
    })
    .unwrap();
    let stored = pb::CreateProductResponse {
        product: Some(pb::Product {
            sku: "OLD-1".into(),
            name: "from before".into(),
            ..Default::default()
        }),
        stock: None,
    };
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO inventory.idempotency_keys (idempotency_key, fingerprint, response) \
             VALUES ($1, $2, $3)",
            &[&legacy.key, &legacy.fingerprint, &stored.encode_to_vec()],
        )
        .await
        .unwrap();

    // The server migrates to scoped keys at start.
    let operator = pki.operator("operator-test", "test").unwrap();
    let server = Inventory::start_with(cfg.clone(), Some(operator), Some(pki))
        .await
        .unwrap();
    let mut inventory = server.client().await.unwrap();
    let replayed = inventory
        .create_product(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replayed.product.unwrap().name,
        "from before",
        "the old record answered"
    );
    let err = inventory
        .get_product(pb::GetProductRequest {
            sku: "OLD-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the create did not run again");
    // The old record blocks nobody: another request with its key is new.
    inventory
        .create_product(product("old-key", "NEW-1"))
        .await
        .unwrap();

    // The sweeper: records older than the window go, newer ones stay.
    client
        .execute(
            "UPDATE inventory.idempotency_keys SET create_time = now() - interval '8 days' \
             WHERE method = ''",
            &[],
        )
        .await
        .unwrap();
    let store = Db::new(&cfg).unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let swept = store
        .sweep_idempotency("inventory.idempotency_keys", week)
        .await
        .unwrap();
    assert_eq!(swept, 1);
    let left: i64 = client
        .query_one("SELECT count(*) FROM inventory.idempotency_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the new record stays");
    server.stop().await.unwrap();
}

/// A refusal is the key's answer: a retry that arrives after the stock came
/// back (as a retry still in flight when the caller acted on the refusal
/// would) is refused again and reserves nothing; a new key is a new call.
#[tokio::test]
async fn a_refusal_is_the_keys_answer_however_late_the_retry() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let mut inventory = server.client().await.unwrap();
    inventory.create_product(product("p", "R-1")).await.unwrap();
    let reserve = |key: &str| pb::ReserveStockRequest {
        idempotency_key: key.into(),
        order_id: "order-1".into(),
        lines: vec![pb::ReservationLineRequest {
            sku: "R-1".into(),
            quantity: 2,
        }],
    };
    let first = inventory.reserve_stock(reserve("r")).await.unwrap_err();
    assert_eq!(first.code(), Code::FailedPrecondition, "{first:?}");

    // The stock comes back; the late retry still gets the first answer.
    inventory
        .adjust_stock(pb::AdjustStockRequest {
            idempotency_key: "more".into(),
            sku: "R-1".into(),
            delta: 5,
            reason: "delivery".into(),
        })
        .await
        .unwrap();
    let late = inventory.reserve_stock(reserve("r")).await.unwrap_err();
    assert_eq!(late.code(), first.code());
    assert_eq!(late.message(), first.message());
    let stock = stock_of(&mut inventory, "R-1").await.unwrap();
    assert_eq!((stock.available, stock.reserved), (6, 0), "nothing held");

    // The same key with another request is still a conflict, and a new key
    // is a new call.
    let mut other = reserve("r");
    other.lines[0].quantity = 1;
    let conflict = inventory.reserve_stock(other).await.unwrap_err();
    assert!(
        conflict.message().contains("different request"),
        "{conflict:?}"
    );
    inventory.reserve_stock(reserve("r2")).await.unwrap();
    server.stop().await.unwrap();
}
