//! Per-service database roles (weft_service::roles): the bootstrap is
//! idempotent and takes over a database an administrator migrated before;
//! inventory migrates as its migrating role and serves as its own role, which
//! can use its schema's rows and nothing else: not payments' schema, not its
//! own schema's structure, not `public`.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use weft_proto::inventory::v1 as pb;
use weft_proto::money::v1::Money;
use weft_service::roles::{Passwords, Roles, bootstrap};
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, config, mtls};
use weft_tests::pki::TestPki;

/// A connection to the test database as `user` (with `password`, for servers
/// that ask for one).
async fn connect_as(db: &TestDb, user: &str, password: &str) -> tokio_postgres::Client {
    let mut config = db.config().clone();
    config.user(user).password(password);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

fn denied(result: Result<impl std::fmt::Debug, tokio_postgres::Error>) -> bool {
    matches!(
        result.map_err(|e| e.code().cloned()),
        Err(Some(
            tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
        ))
    )
}

#[tokio::test]
async fn a_service_migrates_as_its_owner_and_serves_as_a_role_confined_to_its_rows() {
    let db = TestDb::create().await.unwrap();
    let admin = db.connect().await.unwrap();
    let passwords = Passwords {
        service: Some("serve-pw".into()),
        migrator: Some("migrate-pw".into()),
        reset: false,
    };

    // Payments as an earlier version ran it: migrated by the administrator,
    // its history in public.
    let mut legacy = db.connect().await.unwrap();
    let mut runner = weft_payments::server::migrations();
    runner.set_migration_table_name("weft_payments_migrations");
    runner.run_async(&mut legacy).await.unwrap();
    drop(legacy);
    assert!(
        admin
            .query_one(
                "SELECT to_regclass('public.weft_payments_migrations')::text",
                &[]
            )
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
            .is_some()
    );

    // The bootstrap, twice: the second run changes nothing and fails nothing.
    let mut roles = Vec::new();
    for _ in 0..2 {
        roles.clear();
        for service in ["inventory", "payments"] {
            roles.push(bootstrap(&admin, service, &passwords).await.unwrap());
        }
    }
    let (inv, pay): (&Roles, &Roles) = (&roles[0], &roles[1]);
    assert_eq!(inv.service, format!("{}_inventory", db.name()));
    // Payments' objects and history are now its owner's, in its schema.
    let owner: String = admin
        .query_one(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'payments.accounts'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, pay.owner);
    assert!(
        admin
            .query_one(
                "SELECT to_regclass('payments.weft_payments_migrations')::text",
                &[]
            )
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
            .is_some(),
        "the history moved into the schema"
    );

    // Inventory migrates as its migrating role and serves as its own role.
    let pki = Arc::new(TestPki::new().unwrap());
    let mut cfg = config(
        &db,
        mtls(pki.service("inventory", "inventory").unwrap(), None),
    );
    cfg.database.user(&inv.service).password("serve-pw");
    let mut migrate = db.config().clone();
    migrate.user(&inv.migrator).password("migrate-pw");
    cfg.migrate_database = Some(migrate);
    let operator = pki.operator("operator-test", "test").unwrap();
    let server = Inventory::start_with(cfg, Some(operator), Some(pki))
        .await
        .unwrap();
    let created = server
        .client()
        .await
        .unwrap()
        .create_product(pb::CreateProductRequest {
            idempotency_key: "roles-1".into(),
            sku: "ROLE-1".into(),
            name: "Role".into(),
            unit_price: Some(Money {
                amount_minor: 100,
                currency_code: "USD".into(),
            }),
            initial_stock: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.product.unwrap().sku, "ROLE-1");
    let table_owner: String = admin
        .query_one(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'inventory.products'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        table_owner, inv.owner,
        "what the migrations made is the owner's"
    );

    // What inventory's own role can and cannot do.
    let as_inventory = connect_as(&db, &inv.service, "serve-pw").await;
    let rows = as_inventory
        .query("SELECT sku FROM inventory.products", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(denied(
        as_inventory
            .query("SELECT * FROM payments.accounts", &[])
            .await
    ));
    assert!(denied(
        as_inventory
            .execute("DELETE FROM payments.ledger_entries", &[])
            .await
    ));
    assert!(denied(
        as_inventory
            .batch_execute("CREATE TABLE inventory.sneaky (x int)")
            .await
    ));
    assert!(denied(
        as_inventory
            .batch_execute("DROP TABLE inventory.products")
            .await
    ));
    assert!(denied(
        as_inventory
            .batch_execute("CREATE TABLE public.sneaky (x int)")
            .await
    ));
    // Nor payments' role inventory's.
    let as_payments = connect_as(&db, &pay.service, "serve-pw").await;
    assert!(denied(
        as_payments
            .query("SELECT * FROM inventory.products", &[])
            .await
    ));
    as_payments
        .query("SELECT count(*) FROM payments.accounts", &[])
        .await
        .unwrap();

    server.stop().await.unwrap();
    drop((as_inventory, as_payments));
    // Roles belong to the server, not the database: leave none behind.
    // One role at a time, owners first (their default privileges name the
    // serving roles).
    for role in [
        &inv.owner,
        &pay.owner,
        &inv.migrator,
        &inv.service,
        &pay.migrator,
        &pay.service,
    ] {
        admin
            .batch_execute(&format!("DROP OWNED BY {role} CASCADE"))
            .await
            .unwrap();
    }
    drop(admin);
    let other = weft_tests::postgres::admin_connect().await.unwrap();
    for role in [
        &inv.migrator,
        &inv.service,
        &inv.owner,
        &pay.migrator,
        &pay.service,
        &pay.owner,
    ] {
        other
            .batch_execute(&format!("DROP ROLE {role}"))
            .await
            .unwrap();
    }
}

/// Another task's migration (its ALTER TABLE) and a bootstrap's grants on the
/// same tables update the same catalog rows; run together, one fails with
/// "tuple concurrently updated" (the rehearsal's inventory task did). A
/// bootstrap therefore waits while a migration holds the migrations' lock,
/// and goes on once it is let go.
#[tokio::test]
async fn a_bootstrap_waits_for_a_migration_in_progress() {
    let db = TestDb::create().await.unwrap();
    let migrating = db.connect().await.unwrap();
    migrating
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&weft_service::migrate::MIGRATION_LOCK],
        )
        .await
        .unwrap();
    let admin = db.connect().await.unwrap();
    let passwords = Passwords {
        service: Some("serve-pw".into()),
        migrator: Some("migrate-pw".into()),
        reset: false,
    };
    let mut running = Box::pin(bootstrap(&admin, "inventory", &passwords));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), &mut running)
            .await
            .is_err(),
        "the bootstrap ran while a migration held its lock"
    );
    migrating
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&weft_service::migrate::MIGRATION_LOCK],
        )
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), running)
        .await
        .expect("the bootstrap did not go on once the lock was let go")
        .unwrap();
}
