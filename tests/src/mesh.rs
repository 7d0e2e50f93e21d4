//! The whole mesh for tests: two instances each of inventory, payments and
//! orders on one test database (or one each, for benchmarks that count each
//! service's commits), over mTLS with the shipped policies, found
//! through a local discovery directory; operator and orders clients; and the
//! invariants every test checks at its end.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft::manifest::PolicySource;
use weft_discovery::{Discovery, Filter, Resolver};
use weft_mesh::{CertStore, ClientOptions, IdentityPaths, MeshChannel, MeshClient, Policy};
use weft_orders::{OrdersConfig, SagaConfig};
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::money::v1::Money;
use weft_proto::orders::v1 as orders_pb;
use weft_proto::orders::v1::orders_service_client::OrdersServiceClient;
use weft_proto::payments::v1 as payments_pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_service::{Config, RegistrationConfig, ServeError};

use crate::TestDb;
use crate::inventory::{config, mtls};
use crate::pki::{TRUST_DOMAIN, TestPki};
use crate::process::{ServiceProcess, binary, service_env};

/// How long a discovery record lives without a heartbeat.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// The currency of the test shop.
pub const CURRENCY: &str = "EUR";

/// A service instance running in this process.
#[derive(Debug)]
struct Running {
    service: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
    /// Where its metrics endpoint listens, once bound.
    metrics_bound: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    /// Where it serves gRPC.
    addr: std::net::SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mesh of a test.
#[derive(Debug)]
pub struct Mesh {
    /// The test's database: all three services', each in its own schema
    /// (as in production), or orders' alone when the mesh was started with
    /// a database per service ([`Mesh::without_orders_apart`]).
    pub db: TestDb,
    /// Inventory's and payments' databases, when apart from `db`.
    apart: Option<(TestDb, TestDb)>,
    pki: Arc<TestPki>,
    registry: tempfile::TempDir,
    policies: tempfile::TempDir,
    running: Vec<Running>,
    processes: Vec<ServiceProcess>,
    /// The payments account orders' captures pay into.
    pub merchant_account_id: String,
    /// How orders drive sagas (short leases and quick retries in tests).
    pub saga: SagaConfig,
    operator: IdentityPaths,
    orders_identity: IdentityPaths,
    /// Connections each instance may hold.
    pub pool_size: usize,
}

impl Mesh {
    /// Two instances each of inventory, payments and orders, all SERVING
    /// and registered, and a merchant account.
    pub async fn start() -> Result<Self> {
        let mut mesh = Self::without_orders().await?;
        mesh.add_orders(2).await?;
        Ok(mesh)
    }

    /// Two instances each of inventory and payments, and a merchant
    /// account; orders is started by the test.
    pub async fn without_orders() -> Result<Self> {
        Self::build(None, true).await
    }

    /// As [`Mesh::without_orders`], with each service in a database of its
    /// own, so that each one's transactions can be counted apart
    /// (`pg_stat_database` counts per database); unless `durable`, commits
    /// do not wait for the disk
    /// ([`TestDb::commit_without_waiting_for_disk`]).
    pub async fn without_orders_apart(durable: bool) -> Result<Self> {
        Self::build(
            Some((TestDb::create().await?, TestDb::create().await?)),
            durable,
        )
        .await
    }

    async fn build(apart: Option<(TestDb, TestDb)>, durable: bool) -> Result<Self> {
        let pki = Arc::new(TestPki::new()?);
        let operator = pki.operator("operator-mesh", "mesh")?;
        let orders_identity = pki.service("orders", "orders")?;
        let mut mesh = Self {
            db: TestDb::create().await?,
            apart,
            pki,
            registry: tempfile::tempdir()?,
            policies: write_policies()?,
            running: Vec::new(),
            processes: Vec::new(),
            merchant_account_id: String::new(),
            saga: SagaConfig {
                lease: Duration::from_secs(2),
                retry_base: Duration::from_millis(50),
                retry_max: Duration::from_millis(500),
                recovery_every: Duration::from_millis(100),
                recovery_concurrency: 32,
            },
            operator,
            orders_identity,
            pool_size: 4,
        };
        if !durable {
            for (_, db) in mesh.databases() {
                db.commit_without_waiting_for_disk().await?;
            }
        }
        for _ in 0..2 {
            mesh.add("inventory").await?;
            mesh.add("payments").await?;
        }
        mesh.wait_for_endpoints("inventory", 2).await?;
        mesh.wait_for_endpoints("payments", 2).await?;
        mesh.merchant_account_id = mesh.open_account("merchant", 0).await?;
        Ok(mesh)
    }

    /// The discovery setting of the mesh.
    pub fn setting(&self) -> String {
        format!(
            "local://{}?ttl_ms={}&poll_ms=100",
            self.registry.path().display(),
            RECORD_TTL.as_millis()
        )
    }

    /// The database `service` keeps its state in.
    pub fn db_of(&self, service: &str) -> &TestDb {
        match (&self.apart, service) {
            (Some((inventory, _)), "inventory") => inventory,
            (Some((_, payments)), "payments") => payments,
            _ => &self.db,
        }
    }

    /// Every database of the mesh, each once, with the services in it.
    pub fn databases(&self) -> Vec<(&'static str, &TestDb)> {
        match &self.apart {
            Some((inventory, payments)) => vec![
                ("orders", &self.db),
                ("inventory", inventory),
                ("payments", payments),
            ],
            None => vec![("all", &self.db)],
        }
    }

    /// The mesh's PKI.
    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }

    fn service_config(&self, service: &'static str, n: usize) -> Result<Config> {
        let identity = self.pki.service(&format!("{service}-{n}"), service)?;
        let mut cfg = config(
            self.db_of(service),
            mtls(identity, Some(policy(self.policies.path(), service)?)),
        );
        cfg.registration = Some(RegistrationConfig {
            discovery: self.setting(),
            instance_id: format!("{service}-{n}"),
            advertise: None,
            attributes: Default::default(),
        });
        cfg.pool_size = self.pool_size;
        cfg.db_timeout = Duration::from_secs(10);
        // Each instance reports into its own registry, as a process would,
        // on an endpoint of its own.
        cfg.metrics = Arc::new(weft_mesh::Metrics::new());
        cfg.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        Ok(cfg)
    }

    /// Starts another instance of inventory or payments in this process.
    pub async fn add(&mut self, service: &'static str) -> Result<()> {
        let n = self.running.len();
        let cfg = self.service_config(service, n)?;
        let metrics_bound = cfg.metrics_bound.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = match service {
            "inventory" => tokio::spawn(weft_inventory::run(listener, cfg, shutdown)),
            "payments" => tokio::spawn(weft_payments::run(listener, cfg, shutdown)),
            other => bail!("no such service {other}"),
        };
        self.running.push(Running {
            service,
            stop: Some(stop),
            task,
            metrics_bound,
            addr,
        });
        Ok(())
    }

    /// The configuration of orders instance `n`.
    pub fn orders_config(&self, n: usize) -> Result<OrdersConfig> {
        let mut cfg = OrdersConfig::new(
            self.service_config("orders", n)?,
            self.setting(),
            self.merchant_account_id.clone(),
        );
        cfg.saga = self.saga.clone();
        cfg.upstream.call_timeout = Duration::from_secs(5);
        Ok(cfg)
    }

    /// Starts `count` orders instances in this process and waits until all
    /// orders instances are registered healthy.
    pub async fn add_orders(&mut self, count: usize) -> Result<()> {
        for _ in 0..count {
            let n = self.running.len();
            let cfg = self.orders_config(n)?;
            let metrics_bound = cfg.service.metrics_bound.clone();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(weft_orders::run(listener, cfg, async {
                let _ = stopped.await;
            }));
            self.running.push(Running {
                service: "orders",
                stop: Some(stop),
                task,
                metrics_bound,
                addr,
            });
        }
        let total = self
            .running
            .iter()
            .filter(|r| r.service == "orders")
            .count();
        self.wait_for_endpoints("orders", total).await
    }

    /// Starts orders as its own process, instance `instance_id`, with
    /// `extra` settings (a crash point, say); returns its index for
    /// [`Mesh::kill_process`].
    pub fn spawn_orders(&mut self, instance_id: &str, extra: &[(&str, &str)]) -> Result<usize> {
        let identity = self.pki.service(instance_id, "orders")?;
        let policy = self.policies.path().join("orders.toml");
        let mut settings: Vec<(&str, String)> = vec![
            ("WEFT_POLICY", policy.display().to_string()),
            ("WEFT_DISCOVERY", self.setting()),
            ("WEFT_INSTANCE_ID", instance_id.into()),
            ("WEFT_MERCHANT_ACCOUNT", self.merchant_account_id.clone()),
            (
                "WEFT_SAGA_LEASE_MS",
                self.saga.lease.as_millis().to_string(),
            ),
            ("WEFT_RECOVERY_MS", "100".into()),
            ("WEFT_DB_POOL_SIZE", self.pool_size.to_string()),
            ("RUST_LOG", "info".into()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let env = service_env(self.db.url(), &identity, &settings);
        self.processes
            .push(ServiceProcess::start(&binary("weft-orders")?, &env)?);
        Ok(self.processes.len() - 1)
    }

    /// Kills an orders process at once.
    pub fn kill_process(&mut self, n: usize) {
        if let Some(p) = self.processes.get_mut(n) {
            p.kill();
        }
    }

    /// Stops every instance of `service` through the drain protocol.
    pub async fn stop_all(&mut self, service: &str) -> Result<()> {
        let (stopping, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| r.service == service);
        self.running = kept;
        for mut r in stopping {
            if let Some(stop) = r.stop.take() {
                let _ = stop.send(());
            }
            let task = &mut r.task;
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("an instance did not stop within 30 s")???;
        }
        Ok(())
    }

    /// Where the running instances of `service` serve gRPC.
    pub fn addresses(&self, service: &str) -> Vec<std::net::SocketAddr> {
        self.running
            .iter()
            .filter(|r| r.service == service)
            .map(|r| r.addr)
            .collect()
    }

    /// Scrapes the metrics endpoint of every running instance of `service`
    /// over HTTP, as Prometheus would; returns each body.
    pub async fn scrape(&self, service: &str) -> Result<Vec<String>> {
        let mut bodies = Vec::new();
        for r in self.running.iter().filter(|r| r.service == service) {
            let addr = r
                .metrics_bound
                .get()
                .copied()
                .context("the metrics endpoint is not bound")?;
            bodies.push(crate::http::get(addr, "/metrics").await?);
        }
        Ok(bodies)
    }

    /// Waits until discovery shows `count` healthy instances of `service`.
    pub async fn wait_for_endpoints(&self, service: &str, count: usize) -> Result<()> {
        let discovery = Discovery::from_setting(&self.setting()).await?;
        let mut rx = discovery.watch(service, &Filter::any())?;
        let what = format!("{count} healthy {service} instances");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = rx.borrow().endpoints.iter().filter(|e| e.healthy).count();
            if healthy >= count {
                return Ok(());
            }
            if let Some(r) = self.running.iter().find(|r| r.task.is_finished()) {
                bail!("{} exited while waiting for {what}", r.service);
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    /// A mesh channel to `service` presenting `identity`.
    pub async fn channel_as(
        &self,
        service: &'static str,
        identity: &IdentityPaths,
        options: ClientOptions,
    ) -> Result<MeshChannel> {
        let store = CertStore::load(identity.clone(), Duration::from_secs(60))?;
        let client = MeshClient::connect(
            &self.setting(),
            Some(store),
            &[weft_proto::FILE_DESCRIPTOR_SET],
        )
        .await?;
        Ok(client.channel_with(service, options)?)
    }

    /// The operator identity of the test.
    pub fn operator(&self) -> &IdentityPaths {
        &self.operator
    }

    /// An identity of the orders service, for calling as orders would.
    pub fn orders_identity(&self) -> &IdentityPaths {
        &self.orders_identity
    }

    /// Inventory, as the operator.
    pub async fn inventory(&self) -> Result<InventoryServiceClient<MeshChannel>> {
        let channel = self
            .channel_as("inventory", &self.operator, ClientOptions::default())
            .await?;
        Ok(InventoryServiceClient::new(channel))
    }

    /// Payments, as the operator.
    pub async fn payments(&self) -> Result<PaymentsServiceClient<MeshChannel>> {
        let channel = self
            .channel_as("payments", &self.operator, ClientOptions::default())
            .await?;
        Ok(PaymentsServiceClient::new(channel))
    }

    /// Orders, as the operator, with `options`.
    pub async fn orders_with(
        &self,
        options: ClientOptions,
    ) -> Result<OrdersServiceClient<MeshChannel>> {
        let channel = self.channel_as("orders", &self.operator, options).await?;
        Ok(OrdersServiceClient::new(channel))
    }

    /// Orders, as the operator.
    pub async fn orders(&self) -> Result<OrdersServiceClient<MeshChannel>> {
        self.orders_with(ClientOptions::default()).await
    }

    /// Creates a product priced `price_minor` EUR with `stock` units.
    pub async fn product(&self, sku: &str, price_minor: i64, stock: i64) -> Result<()> {
        self.inventory()
            .await?
            .create_product(inventory_pb::CreateProductRequest {
                idempotency_key: format!("product/{sku}"),
                sku: sku.into(),
                name: format!("Product {sku}"),
                unit_price: Some(eur(price_minor)),
                initial_stock: stock,
            })
            .await?;
        Ok(())
    }

    /// Opens an EUR account for `owner` and pays `deposit_minor` into it;
    /// returns its id.
    pub async fn open_account(&self, owner: &str, deposit_minor: i64) -> Result<String> {
        let mut payments = self.payments().await?;
        let account = payments
            .open_account(payments_pb::OpenAccountRequest {
                idempotency_key: format!("account/{owner}"),
                owner: owner.into(),
                currency_code: CURRENCY.into(),
                credit_limit_minor: 0,
            })
            .await?
            .into_inner()
            .account
            .context("no account")?;
        if deposit_minor > 0 {
            payments
                .deposit(payments_pb::DepositRequest {
                    idempotency_key: format!("deposit/{owner}"),
                    account_id: account.account_id.clone(),
                    amount: Some(eur(deposit_minor)),
                })
                .await?;
        }
        Ok(account.account_id)
    }

    /// An account's balance and held amount.
    pub async fn balance(&self, account_id: &str) -> Result<(i64, i64)> {
        let account = self
            .payments()
            .await?
            .get_account(payments_pb::GetAccountRequest {
                account_id: account_id.into(),
            })
            .await?
            .into_inner()
            .account
            .context("no account")?;
        let minor = |m: Option<Money>| m.map(|m| m.amount_minor).unwrap_or(0);
        Ok((minor(account.balance), minor(account.held)))
    }

    /// A product's (available, reserved, sold).
    pub async fn stock(&self, sku: &str) -> Result<(i64, i64, i64)> {
        let levels = self
            .inventory()
            .await?
            .get_stock(inventory_pb::GetStockRequest {
                skus: vec![sku.into()],
            })
            .await?
            .into_inner()
            .stock;
        let level = levels.first().context("no stock level")?;
        Ok((level.available, level.reserved, level.sold))
    }

    /// Waits until no order is PENDING (every saga settled), within `within`.
    pub async fn wait_settled(&self, within: Duration) -> Result<()> {
        let client = self.db.connect().await?;
        if !has_orders(&client).await? {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let row = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE status = 'PENDING' OR step <> 'DONE'), \
                     string_agg(order_id || ' ' || status || ' ' || step, ', ') \
                     FILTER (WHERE step <> 'DONE') FROM orders.orders",
                    &[],
                )
                .await?;
            let unsettled: i64 = row.get(0);
            if unsettled == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let which: Option<String> = row.get(1);
                bail!("{unsettled} orders unsettled after {within:?}: {which:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks the invariants that hold whenever every saga has settled:
    /// stock is conserved (available + reserved + sold = received), nothing
    /// is held (no HELD reservation, no open authorization, no held money),
    /// each currency's ledger sums to zero and every account's balance is
    /// the sum of its entries, each order has at most one reservation and
    /// one authorization, and the money captured (net of refunds) equals the
    /// total of the confirmed orders.
    pub async fn check_invariants(&self) -> Result<()> {
        self.wait_settled(Duration::from_secs(30)).await?;
        let inventory = self.db_of("inventory").connect().await?;
        let payments = self.db_of("payments").connect().await?;
        let orders = self.db.connect().await?;
        let broken = |what: &str, rows: &[tokio_postgres::Row]| -> Result<()> {
            if rows.is_empty() {
                return Ok(());
            }
            let shown: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            bail!("{what}: {shown:?}")
        };
        let rows = inventory
            .query(
                "SELECT p.sku || ': ' || p.available || '+' || p.reserved || '+' || p.sold \
                 || ' <> ' || coalesce(m.received, 0) \
                 FROM inventory.products p LEFT JOIN (SELECT sku, sum(delta) AS received \
                 FROM inventory.stock_movements WHERE kind IN ('create', 'adjust') GROUP BY sku) m \
                 ON m.sku = p.sku \
                 WHERE p.available + p.reserved + p.sold <> coalesce(m.received, 0) \
                 OR p.reserved <> 0",
                &[],
            )
            .await?;
        broken("stock not conserved or still reserved", &rows)?;
        let rows = inventory
            .query(
                "SELECT p.sku || ': sold ' || p.sold || ' <> committed ' || coalesce(c.q, 0) \
                 FROM inventory.products p LEFT JOIN (SELECT l.sku, sum(l.quantity) AS q \
                 FROM inventory.reservation_lines l JOIN inventory.reservations r \
                 USING (reservation_id) WHERE r.status = 'COMMITTED' GROUP BY l.sku) c \
                 ON c.sku = p.sku WHERE p.sold <> coalesce(c.q, 0)",
                &[],
            )
            .await?;
        broken("sold stock does not match committed reservations", &rows)?;
        let rows = inventory
            .query(
                "SELECT reservation_id || ' of order ' || order_id FROM inventory.reservations \
                 WHERE status = 'HELD'",
                &[],
            )
            .await?;
        broken("reservations still held", &rows)?;
        let rows = payments
            .query(
                "SELECT currency_code || ' sums to ' || sum(amount_minor) \
                 FROM payments.ledger_entries GROUP BY currency_code HAVING sum(amount_minor) <> 0",
                &[],
            )
            .await?;
        broken("ledger does not sum to zero", &rows)?;
        let rows = payments
            .query(
                "SELECT a.account_id || ': balance ' || a.balance || ' held ' || a.held_minor \
                 FROM (SELECT account_id, kind, held_minor, credit_limit_minor, balance_minor \
                 + coalesce((SELECT sum(balance_minor) FROM payments.account_slots s \
                 WHERE s.account_id = accounts.account_id), 0) AS balance \
                 FROM payments.accounts) a LEFT JOIN (SELECT account_id, sum(amount_minor) AS b, \
                 coalesce(sum(amount_minor) FILTER (WHERE book = 'hold'), 0) AS h \
                 FROM payments.ledger_entries GROUP BY account_id) e USING (account_id) \
                 WHERE a.balance <> coalesce(e.b, 0) OR a.held_minor <> coalesce(e.h, 0) \
                 OR a.held_minor <> 0 \
                 OR (a.kind = 'customer' AND a.balance + a.credit_limit_minor < 0)",
                &[],
            )
            .await?;
        broken(
            "account figures disagree with the ledger, or money is held",
            &rows,
        )?;
        let rows = payments
            .query(
                "SELECT authorization_id || ' for ' || reference FROM payments.authorizations \
                 WHERE status = 'AUTHORIZED'",
                &[],
            )
            .await?;
        broken("authorizations still open", &rows)?;
        let rows = payments
            .query(
                "SELECT reference || ' has ' || count(*) || ' authorizations' \
                 FROM payments.authorizations GROUP BY reference HAVING count(*) > 1",
                &[],
            )
            .await?;
        broken("an order charged more than once", &rows)?;
        let rows = inventory
            .query(
                "SELECT order_id || ' has ' || count(*) || ' reservations' \
                 FROM inventory.reservations GROUP BY order_id HAVING count(*) > 1",
                &[],
            )
            .await?;
        broken("an order reserved more than once", &rows)?;
        // The rest relates orders to their effects; without orders, payments
        // were moved by the test itself. The services' databases may be
        // apart, so the rows are related here.
        if !has_orders(&orders).await? {
            return Ok(());
        }
        let row = payments
            .query_one(
                "SELECT (SELECT coalesce(sum(captured_minor - refunded_minor), 0)::bigint \
                 FROM payments.authorizations WHERE payee_account_id = $1), \
                 (SELECT balance_minor + coalesce((SELECT sum(balance_minor) \
                 FROM payments.account_slots WHERE account_id = $1), 0)::bigint \
                 FROM payments.accounts WHERE account_id = $1)",
                &[&self.merchant_account_id],
            )
            .await?;
        let (captured, merchant): (i64, i64) = (row.get(0), row.get(1));
        let confirmed: i64 = orders
            .query_one(
                "SELECT coalesce(sum(total_minor), 0)::bigint FROM orders.orders \
                 WHERE status = 'CONFIRMED'",
                &[],
            )
            .await?
            .get(0);
        ensure!(
            captured == confirmed && merchant == confirmed,
            "captured {captured} and merchant balance {merchant} must equal confirmed orders' total {confirmed}"
        );
        let reservations: HashMap<String, String> = inventory
            .query("SELECT order_id, status FROM inventory.reservations", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // (status, captured and not refunded) by order.
        let authorizations: HashMap<String, (String, bool)> = payments
            .query(
                "SELECT reference, status, captured_minor <> refunded_minor \
                 FROM payments.authorizations",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let mut disagree = Vec::new();
        for row in orders
            .query(
                "SELECT order_id, status, coalesce(total_minor, 0)::bigint FROM orders.orders",
                &[],
            )
            .await?
        {
            let (order_id, status, total): (String, String, i64) =
                (row.get(0), row.get(1), row.get(2));
            let reservation = reservations.get(&order_id).map(String::as_str);
            let authorization = authorizations.get(&order_id);
            let auth_status = authorization.map(|(s, _)| s.as_str());
            let wrong = match status.as_str() {
                "CONFIRMED" => {
                    reservation != Some("COMMITTED")
                        || (total > 0 && auth_status != Some("CAPTURED"))
                }
                "CANCELLED" => {
                    reservation != Some("RETURNED") || authorization.is_some_and(|(_, kept)| *kept)
                }
                "REJECTED" => {
                    matches!(reservation, Some("HELD" | "COMMITTED"))
                        || matches!(auth_status, Some("AUTHORIZED" | "CAPTURED"))
                }
                _ => false,
            };
            if wrong {
                disagree.push(format!(
                    "{order_id} {status} but reservation {}, authorization {}",
                    reservation.unwrap_or("none"),
                    auth_status.unwrap_or("none")
                ));
            }
        }
        ensure!(
            disagree.is_empty(),
            "orders disagree with their reservation or payment: {disagree:?}"
        );
        Ok(())
    }

    /// Stops every in-process instance (orders first) and every process.
    pub async fn stop(mut self) -> Result<()> {
        for p in &mut self.processes {
            p.kill();
        }
        for service in ["orders", "inventory", "payments"] {
            self.stop_all(service).await?;
        }
        Ok(())
    }
}

/// Whether orders ever ran on this database.
async fn has_orders(db: &tokio_postgres::Client) -> Result<bool> {
    Ok(db
        .query_one("SELECT to_regclass('orders.orders') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Places an order and returns it as answered.
pub async fn placed(
    orders: &mut OrdersServiceClient<MeshChannel>,
    request: impl tonic::IntoRequest<orders_pb::PlaceOrderRequest>,
) -> orders_pb::Order {
    match orders.place_order(request).await {
        Ok(response) => response.into_inner().order.unwrap_or_default(),
        Err(status) => panic!("PlaceOrder failed: {status:?}"),
    }
}

/// `minor` euro cents.
pub fn eur(minor: i64) -> Money {
    Money {
        amount_minor: minor,
        currency_code: CURRENCY.into(),
    }
}

/// A PlaceOrder request.
pub fn order_request(
    key: &str,
    customer: &str,
    account_id: &str,
    lines: &[(&str, i64)],
) -> orders_pb::PlaceOrderRequest {
    orders_pb::PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        payment_account_id: account_id.into(),
        lines: lines
            .iter()
            .map(|(sku, quantity)| orders_pb::OrderLineRequest {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
    }
}

/// The shipped policies, moved to the test trust domain.
/// The shipped policies for the test's trust domain, written as `weft up`
/// writes them.
fn write_policies() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for service in ["inventory", "payments", "orders"] {
        let text = weft::manifest::policy_text(&PolicySource::Shipped(service), TRUST_DOMAIN)?
            .context("a shipped policy")?;
        std::fs::write(dir.path().join(format!("{service}.toml")), text)?;
    }
    Ok(dir)
}

fn policy(dir: &Path, service: &str) -> Result<Policy> {
    Ok(Policy::load(&dir.join(format!("{service}.toml")))?)
}
