//! Starts inventory servers for tests, on 127.0.0.1 port 0, and stops them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weft_inventory::Config;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;

use crate::TestDb;

/// A running inventory server.
#[derive(Debug)]
pub struct Inventory {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), weft_inventory::ServeError>>>,
}

/// A test configuration for `db`: quick health checks, short waits.
pub fn config(db: &TestDb) -> Config {
    let mut config = Config::new(db.config().clone());
    config.health_interval = Duration::from_millis(100);
    config.db_timeout = Duration::from_secs(2);
    config.startup_timeout = Duration::from_secs(20);
    config
}

impl Inventory {
    /// Starts a server on `db` with the test configuration and waits until
    /// it reports SERVING.
    pub async fn start(db: &TestDb) -> Result<Self> {
        Self::start_with(config(db)).await
    }

    /// Starts a server with `config` and waits until it reports SERVING.
    pub async fn start_with(config: Config) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(weft_inventory::run(listener, config, async {
            let _ = stopped.await;
        }));
        let server = Self {
            addr,
            stop: Some(stop),
            task: Some(task),
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

    /// A plaintext channel to it.
    pub async fn channel(&self) -> Result<Channel> {
        Channel::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .context("connecting to inventory")
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
    pub async fn wait_for(&self, want: ServingStatus, within: Duration) -> Result<()> {
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
                bail!("inventory exited while waiting for {want:?}");
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
