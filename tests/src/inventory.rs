//! Starts inventory servers for tests, on 127.0.0.1 port 0 and over mTLS
//! unless a test asks for development plaintext, and stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weft_inventory::{Config, Transport};
use weft_mesh::{CertStore, IdentityPaths, Policy, SpiffeId, client_config, mtls_channel};
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;

use crate::TestDb;
use crate::pki::{TRUST_DOMAIN, TestPki};

/// A running inventory server.
#[derive(Debug)]
pub struct Inventory {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), weft_inventory::ServeError>>>,
    /// The client identity `channel` uses; `None` for plaintext.
    client: Option<IdentityPaths>,
    pki: Option<Arc<TestPki>>,
}

/// A test configuration for `db` over `transport`: quick health checks and
/// certificate reloads, short waits.
pub fn config(db: &TestDb, transport: Transport) -> Config {
    let mut config = Config::new(transport, db.config().clone());
    config.health_interval = Duration::from_millis(100);
    config.db_timeout = Duration::from_secs(2);
    config.startup_timeout = Duration::from_secs(20);
    // Tests that are not about draining should not wait for it.
    config.drain = weft_mesh::DrainConfig {
        drain_period: Duration::ZERO,
        grace_period: Duration::from_secs(10),
        ..Default::default()
    };
    config
}

/// mTLS with `identity`, `policy`, and reloads every 100 ms.
pub fn mtls(identity: IdentityPaths, policy: Option<Policy>) -> Transport {
    Transport::Mtls {
        identity: weft_mesh::IdentitySource::Files(identity),
        policy,
        reload_every: Duration::from_millis(100),
    }
}

/// The identity test clients expect inventory to have.
pub fn inventory_id() -> Result<SpiffeId> {
    Ok(SpiffeId::service(TRUST_DOMAIN, "inventory")?)
}

impl Inventory {
    /// Starts a server on `db` over mTLS with a fresh PKI, no policy, and an
    /// operator identity for the test's calls; waits until it is SERVING.
    pub async fn start(db: &TestDb) -> Result<Self> {
        let pki = Arc::new(TestPki::new()?);
        let server = pki.service("inventory", "inventory")?;
        let client = pki.operator("operator-test", "test")?;
        Self::start_with(config(db, mtls(server, None)), Some(client), Some(pki)).await
    }

    /// Starts a server in development plaintext.
    pub async fn start_plaintext(db: &TestDb) -> Result<Self> {
        Self::start_with(config(db, Transport::Plaintext), None, None).await
    }

    /// Starts a server with `config`; `client` is the identity `channel`
    /// presents (mTLS) or `None` (plaintext). Waits until it is SERVING.
    pub async fn start_with(
        config: Config,
        client: Option<IdentityPaths>,
        pki: Option<Arc<TestPki>>,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(weft_inventory::run(listener, config, async {
            let _ = stopped.await;
        }));
        let mut server = Self {
            addr,
            stop: Some(stop),
            task: Some(task),
            client,
            pki,
        };
        server
            .wait_for(ServingStatus::Serving, Duration::from_secs(30))
            .await?;
        Ok(server)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PKI the server's certificates come from, when the harness made it.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_deref()
    }

    /// The identity the harness's channels present.
    pub fn client_identity(&self) -> Option<&IdentityPaths> {
        self.client.as_ref()
    }

    /// A channel presenting the harness's client identity.
    pub async fn channel(&self) -> Result<Channel> {
        match &self.client {
            Some(identity) => self.channel_as(identity.clone()),
            None => Channel::from_shared(format!("http://{}", self.addr))?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .context("connecting to inventory"),
        }
    }

    /// A lazily connecting mTLS channel presenting `identity` and expecting
    /// the server to be inventory.
    pub fn channel_as(&self, identity: IdentityPaths) -> Result<Channel> {
        let store = CertStore::load(identity, Duration::from_millis(100))?;
        Ok(mtls_channel(
            self.addr,
            client_config(&store, inventory_id()?)?,
        )?)
    }

    /// A client of the inventory API.
    pub async fn client(&self) -> Result<InventoryServiceClient<Channel>> {
        Ok(InventoryServiceClient::new(self.channel().await?))
    }

    /// What grpc.health.v1 says of the inventory service now.
    pub async fn health(&self) -> Result<ServingStatus> {
        let mut health = HealthClient::new(self.channel().await?);
        let response = health
            .check(HealthCheckRequest {
                service: "weft.inventory.v1.InventoryService".into(),
            })
            .await?;
        Ok(response.into_inner().status())
    }

    /// Polls health until it reports `want`, failing after `within`.
    pub async fn wait_for(&mut self, want: ServingStatus, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            match self.health().await {
                Ok(status) if status == want => return Ok(()),
                Ok(status) => last = Some(format!("{status:?}")),
                Err(e) => last = Some(format!("{e:#}")),
            }
            if let Some(task) = &self.task
                && task.is_finished()
            {
                // Why it exited is what the test needs to say.
                let why = match self.task.take() {
                    Some(task) => match task.await {
                        Ok(Ok(())) => "it returned".to_owned(),
                        Ok(Err(e)) => format!("{e}"),
                        Err(e) => format!("{e}"),
                    },
                    None => String::new(),
                };
                bail!("inventory exited while waiting for {want:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("inventory not {want:?} within {within:?}; last seen: {last:?}")
    }

    /// Shuts it down gracefully and waits until it has stopped.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("inventory did not stop within 30 s")???;
        }
        Ok(())
    }
}

impl Drop for Inventory {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `sku`'s stock as `client`'s GetStock reports it.
pub async fn stock_of(
    client: &mut InventoryServiceClient<Channel>,
    sku: &str,
) -> Result<pb::StockLevel> {
    let levels = client
        .get_stock(pb::GetStockRequest {
            skus: vec![sku.into()],
        })
        .await?
        .into_inner()
        .stock;
    levels
        .into_iter()
        .next()
        .context("GetStock answered no level")
}
