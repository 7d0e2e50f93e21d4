//! TLS to PostgreSQL (`WEFT_DB_CA`): against a cluster serving a certificate
//! from a test CA for 127.0.0.1, inventory connects over verified TLS (the
//! server shows its connections as SSL) and works; with another CA it
//! refuses to start, naming the certificate problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use weft::certs::{DevCa, Validity};
use weft::postgres::Cluster;
use weft_mesh::SpiffeId;
use weft_proto::inventory::v1 as pb;
use weft_service::pg_tls::PgTls;
use weft_service::{Config, Transport};
use weft_tests::inventory::Inventory;

fn chown_to_postgres(path: &std::path::Path) {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() == "0" {
        assert!(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .unwrap()
                .success()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_talks_to_postgres_over_verified_tls() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .unwrap();
    // A CA, and a server certificate for 127.0.0.1 the cluster serves.
    let ca = DevCa::create("weft.test", Validity::days(1)).unwrap();
    let certs = tempfile::tempdir().unwrap();
    ca.write(certs.path(), false).unwrap();
    let server = ca
        .issue(
            &SpiffeId::service("weft.test", "postgres").unwrap(),
            Validity::days(1),
            &["127.0.0.1".to_owned()],
        )
        .unwrap();
    let (cert, key) = server.write(cluster.dir(), "server", false).unwrap();
    chown_to_postgres(&cert);
    chown_to_postgres(&key);

    let (admin, connection) = cluster.config("postgres").connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    // One statement at a time: ALTER SYSTEM refuses a multi-statement batch.
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
        "CREATE DATABASE weft".to_owned(),
    ] {
        admin.simple_query(&statement).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let database = |bundle: &std::path::Path| {
        let mut db = cluster.config("weft");
        db.ssl_mode(SslMode::Require);
        let mut config = Config::new(Transport::Plaintext, db);
        config.database_tls = Some(PgTls::from_bundle(bundle).unwrap());
        config.startup_timeout = Duration::from_secs(2);
        config.health_interval = Duration::from_millis(100);
        config
    };

    // The right CA: migrations, health and calls over TLS.
    let inventory = Inventory::start_with(database(&certs.path().join("ca.pem")), None, None)
        .await
        .unwrap();
    inventory
        .client()
        .await
        .unwrap()
        .create_product(pb::CreateProductRequest {
            idempotency_key: "tls-1".into(),
            sku: "TLS-1".into(),
            name: "Over TLS".into(),
            unit_price: Some(weft_proto::money::v1::Money {
                amount_minor: 100,
                currency_code: "EUR".into(),
            }),
            initial_stock: 1,
        })
        .await
        .unwrap();
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'weft' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let plain: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'weft' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        encrypted > 0 && plain == 0,
        "{encrypted} TLS, {plain} plain connections"
    );
    inventory.stop().await.unwrap();

    // Another CA: the server's certificate is refused and inventory does
    // not start.
    let other = tempfile::tempdir().unwrap();
    DevCa::create("other.test", Validity::days(1))
        .unwrap()
        .write(other.path(), false)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = weft_inventory::run(listener, database(&other.path().join("ca.pem")), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not reachable"), "{refused}");
    drop(admin);
}
