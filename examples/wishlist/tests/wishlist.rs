//! Wishlist end to end: inventory, with Weft's shipped policy plus the
//! example's rule, registered in a local discovery directory; wishlist finding
//! it there through the mesh; both over mTLS with a test PKI and on a
//! PostgreSQL database of the test's own (a schema each, as in production).

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use weft_mesh::{CertStore, IdentityPaths, Policy, SpiffeId, client_config, mtls_channel};
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::money::v1::Money;
use weft_service::{RegistrationConfig, ServeError};
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, config, mtls};
use weft_tests::pki::{TRUST_DOMAIN, TestPki};
use weft_wishlist::WishlistConfig;
use weft_wishlist::pb;
use weft_wishlist::pb::wishlist_service_client::WishlistServiceClient;

/// Inventory and wishlist, running.
struct Mesh {
    wishlist: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
    inventory: Option<Inventory>,
    pki: Arc<TestPki>,
    _discovery: tempfile::TempDir,
    db: TestDb,
}

/// A policy file of the repository (or several, concatenated, as `weft up`
/// does) with its trust domain set to the test PKI's, as the launcher sets
/// it to the mesh's.
fn policy(files: &[&str]) -> Result<Policy> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = String::new();
    for file in files {
        text += &std::fs::read_to_string(root.join(file)).with_context(|| file.to_string())?;
        text.push('\n');
    }
    let text = text.replace("spiffe://weft.local/", &format!("spiffe://{TRUST_DOMAIN}/"));
    Ok(Policy::from_toml(&text)?)
}

impl Mesh {
    /// Starts inventory (with the catalogue's WIDGET-1 and GADGET-1) and
    /// wishlist, and waits until wishlist answers.
    async fn start() -> Result<Self> {
        // Weft's policy and the rule the example adds to it.
        Self::start_with(&[
            "../../config/policy/inventory.toml",
            "policy/inventory.toml",
        ])
        .await
    }

    /// The same, with inventory's policy from `inventory_policy`.
    async fn start_with(inventory_policy: &[&str]) -> Result<Self> {
        let db = TestDb::create().await?;
        let pki = Arc::new(TestPki::new()?);
        let discovery = tempfile::tempdir()?;
        let setting = format!(
            "local://{}?ttl_ms=1000&poll_ms=100",
            discovery.path().display()
        );

        let mut inventory_config = config(
            &db,
            mtls(
                pki.service("inventory", "inventory")?,
                Some(policy(inventory_policy)?),
            ),
        );
        inventory_config.registration = Some(RegistrationConfig {
            discovery: setting.clone(),
            instance_id: "inventory-0".into(),
            advertise: None,
            attributes: Default::default(),
        });
        let operator = pki.operator("operator-test", "test")?;
        let inventory =
            Inventory::start_with(inventory_config, Some(operator), Some(pki.clone())).await?;
        let mut catalogue = inventory.client().await?;
        for (sku, name, cents) in [("WIDGET-1", "Widget", 1999), ("GADGET-1", "Gadget", 4500)] {
            catalogue
                .create_product(inventory_pb::CreateProductRequest {
                    idempotency_key: format!("create-{sku}"),
                    sku: sku.into(),
                    name: name.into(),
                    unit_price: Some(Money {
                        amount_minor: cents,
                        currency_code: "USD".into(),
                    }),
                    initial_stock: 10,
                })
                .await?;
        }

        // Wishlist, finding inventory through discovery, as service/wishlist.
        let service = config(
            &db,
            mtls(
                pki.service("wishlist", "wishlist")?,
                Some(policy(&["policy/wishlist.toml"])?),
            ),
        );
        let mut wishlist_config = WishlistConfig::new(service, setting);
        wishlist_config.inventory_timeout = Duration::from_secs(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let wishlist = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(weft_wishlist::run(listener, wishlist_config, async {
            let _ = stopped.await;
        }));
        let mut mesh = Self {
            wishlist,
            stop: Some(stop),
            task,
            inventory: Some(inventory),
            pki,
            _discovery: discovery,
            db,
        };
        mesh.wait_until_answering().await?;
        Ok(mesh)
    }

    /// A client of wishlist presenting the operator's certificate.
    fn operator(&self) -> Result<WishlistServiceClient<Channel>> {
        self.client_as(self.pki.operator("operator-test", "test")?)
    }

    /// A client of wishlist presenting `identity`, expecting the server to
    /// be wishlist.
    fn client_as(&self, identity: IdentityPaths) -> Result<WishlistServiceClient<Channel>> {
        let store = CertStore::load(identity, Duration::from_secs(60))?;
        let wishlist = SpiffeId::service(TRUST_DOMAIN, "wishlist")?;
        let channel = mtls_channel(self.wishlist, client_config(&store, wishlist)?)?;
        Ok(WishlistServiceClient::new(channel))
    }

    async fn wait_until_answering(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if self.task.is_finished() {
                bail!("wishlist exited: {:?}", (&mut self.task).await);
            }
            let mut request = tonic::Request::new(list_request("nobody"));
            request.set_timeout(Duration::from_secs(1));
            match self.operator()?.list_items(request).await {
                Ok(_) => return Ok(()),
                Err(status) => last = format!("{status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("wishlist did not answer within 30 s; last: {last}")
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task).await???;
        if let Some(inventory) = self.inventory.take() {
            inventory.stop().await?;
        }
        Ok(())
    }
}

fn add_request(customer: &str, sku: &str) -> pb::AddItemRequest {
    pb::AddItemRequest {
        customer_id: customer.into(),
        sku: sku.into(),
    }
}

fn list_request(customer: &str) -> pb::ListItemsRequest {
    pb::ListItemsRequest {
        customer_id: customer.into(),
    }
}

async fn skus(client: &mut WishlistServiceClient<Channel>, customer: &str) -> Vec<String> {
    let items = client
        .list_items(list_request(customer))
        .await
        .unwrap()
        .into_inner()
        .items;
    items.into_iter().map(|i| i.sku).collect()
}

#[tokio::test]
async fn adding_a_product_stores_its_name_and_price_once() {
    let mesh = Mesh::start().await.unwrap();
    let mut client = mesh.operator().unwrap();

    let first = client
        .add_item(add_request("alice", "WIDGET-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.added);
    let item = first.item.unwrap();
    assert_eq!(
        (item.sku.as_str(), item.name.as_str()),
        ("WIDGET-1", "Widget")
    );
    let price = item.unit_price.clone().unwrap();
    assert_eq!(
        (price.amount_minor, price.currency_code.as_str()),
        (1999, "USD")
    );

    // Stored as inventory had it, in wishlist's own schema.
    let sql = mesh.db.connect().await.unwrap();
    let row = sql
        .query_one(
            "SELECT name, price_minor, currency_code FROM wishlist.items \
             WHERE customer_id = 'alice' AND sku = 'WIDGET-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Widget");
    assert_eq!(row.get::<_, i64>(1), 1999);
    assert_eq!(row.get::<_, String>(2), "USD");

    // Again: not an error, nothing changes, the item as first added.
    let again = client
        .add_item(add_request("alice", "WIDGET-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.added);
    assert_eq!(again.item.unwrap(), item);
    let count: i64 = sql
        .query_one("SELECT count(*) FROM wishlist.items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    assert_eq!(skus(&mut client, "alice").await, ["WIDGET-1"]);
    // Another customer's list is another list.
    assert!(skus(&mut client, "bob").await.is_empty());
    mesh.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_products_are_not_found_and_bad_input_names_its_field() {
    let mesh = Mesh::start().await.unwrap();
    let mut client = mesh.operator().unwrap();

    let unknown = client
        .add_item(add_request("alice", "NOPE-1"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("NOPE-1"), "{unknown:?}");

    for (customer, sku, field) in [
        ("", "WIDGET-1", "customer_id"),
        ("   ", "WIDGET-1", "customer_id"),
        (&*"c".repeat(129), "WIDGET-1", "customer_id"),
        ("alice", "", "sku"),
        ("alice", "no spaces", "sku"),
    ] {
        let bad = client
            .add_item(add_request(customer, sku))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
        assert!(bad.message().starts_with(&format!("{field}: ")), "{bad:?}");
    }
    let bad = client.list_items(list_request("")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("customer_id: "), "{bad:?}");
    let bad = client
        .remove_item(pb::RemoveItemRequest {
            customer_id: "alice".into(),
            sku: "bad/sku".into(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("sku: "), "{bad:?}");

    assert!(skus(&mut client, "alice").await.is_empty());
    mesh.stop().await.unwrap();
}

#[tokio::test]
async fn items_list_oldest_first_and_remove_once() {
    let mesh = Mesh::start().await.unwrap();
    let mut client = mesh.operator().unwrap();
    for sku in ["GADGET-1", "WIDGET-1"] {
        client.add_item(add_request("alice", sku)).await.unwrap();
    }
    assert_eq!(skus(&mut client, "alice").await, ["GADGET-1", "WIDGET-1"]);

    let remove = pb::RemoveItemRequest {
        customer_id: "alice".into(),
        sku: "GADGET-1".into(),
    };
    assert!(
        client
            .remove_item(remove.clone())
            .await
            .unwrap()
            .into_inner()
            .removed
    );
    // Again: not an error, nothing to remove.
    assert!(
        !client
            .remove_item(remove)
            .await
            .unwrap()
            .into_inner()
            .removed
    );
    assert_eq!(skus(&mut client, "alice").await, ["WIDGET-1"]);

    // A full list takes no more (and says which field it is about).
    let sql = mesh.db.connect().await.unwrap();
    sql.execute(
        "INSERT INTO wishlist.items (customer_id, sku, name, price_minor, currency_code) \
         SELECT 'carol', 'FILL-' || n, 'Filler', 1, 'USD' FROM generate_series(1, 100) n",
        &[],
    )
    .await
    .unwrap();
    let full = client
        .add_item(add_request("carol", "WIDGET-1"))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition, "{full:?}");
    assert!(full.message().starts_with("customer_id: "), "{full:?}");
    assert_eq!(skus(&mut client, "carol").await.len(), 100);
    mesh.stop().await.unwrap();
}

#[tokio::test]
async fn callers_the_policy_does_not_name_are_denied() {
    let mesh = Mesh::start().await.unwrap();
    // A service of the mesh may read a list but not change it.
    let orders = mesh.pki.service("orders", "orders").unwrap();
    let mut service = mesh.client_as(orders).unwrap();
    let denied = service
        .add_item(add_request("alice", "WIDGET-1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = service
        .remove_item(pb::RemoveItemRequest {
            customer_id: "alice".into(),
            sku: "WIDGET-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(skus(&mut service, "alice").await.is_empty());
    mesh.stop().await.unwrap();
}

#[tokio::test]
async fn inventory_away_is_unavailable_and_what_is_stored_still_answers() {
    let mut mesh = Mesh::start().await.unwrap();
    let mut client = mesh.operator().unwrap();
    client
        .add_item(add_request("alice", "WIDGET-1"))
        .await
        .unwrap();
    // Inventory drains and leaves discovery.
    mesh.inventory.take().unwrap().stop().await.unwrap();

    let away = client
        .add_item(add_request("alice", "GADGET-1"))
        .await
        .unwrap_err();
    assert_eq!(away.code(), Code::Unavailable, "{away:?}");
    // What the caller sees names no endpoint, address or inner error.
    assert_eq!(away.message(), "inventory is unavailable; try again later");
    // An item already on the list needs no inventory, nor do reads.
    let again = client
        .add_item(add_request("alice", "WIDGET-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.added);
    assert_eq!(skus(&mut client, "alice").await, ["WIDGET-1"]);
    mesh.stop().await.unwrap();
}

#[tokio::test]
async fn without_its_rule_in_inventorys_policy_wishlist_cannot_add() {
    // Weft's shipped inventory policy alone: wishlist is not a caller it
    // names, so inventory refuses it; wishlist's caller sees an internal
    // error without inventory's words (the operator finds them in the log).
    let mesh = Mesh::start_with(&["../../config/policy/inventory.toml"])
        .await
        .unwrap();
    let mut client = mesh.operator().unwrap();
    let refused = client
        .add_item(add_request("alice", "WIDGET-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert_eq!(refused.message(), "internal error");
    mesh.stop().await.unwrap();
}
