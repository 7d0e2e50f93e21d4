//! Several inventory instances on one database, registered in a local
//! discovery directory, and mesh clients that find them through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use weft_discovery::local::LocalRegistry;
use weft_discovery::{Discovery, Registry};

/// How long a record lives without a heartbeat.
const RECORD_TTL: Duration = Duration::from_secs(1);
use weft_inventory::RegistrationConfig;
use weft_mesh::{CertStore, ClientOptions, Idempotency, MeshChannel, MeshClient};

use crate::TestDb;
use crate::inventory::{Inventory, config, mtls};
use crate::pki::TestPki;

/// Instances of inventory and the discovery directory they register in.
#[derive(Debug)]
pub struct Cluster {
    pki: Arc<TestPki>,
    registry: tempfile::TempDir,
    /// The running instances by index; `None` once killed or stopped.
    pub instances: Vec<Option<Inventory>>,
    /// The drain protocol's timings for instances added from now on.
    pub drain: weft_mesh::DrainConfig,
    /// Keeps the records of stand-in servers alive (heartbeats) for as long
    /// as the cluster lives.
    stand_ins: LocalRegistry,
}

impl Cluster {
    /// A cluster with no instance yet.
    pub fn new() -> Result<Self> {
        let registry = tempfile::tempdir()?;
        Ok(Self {
            pki: Arc::new(TestPki::new()?),
            stand_ins: LocalRegistry::new(registry.path(), RECORD_TTL),
            registry,
            instances: Vec::new(),
            drain: weft_mesh::DrainConfig {
                drain_period: Duration::from_millis(500),
                grace_period: Duration::from_secs(10),
                ..Default::default()
            },
        })
    }

    /// The discovery setting: records live 1 s without a heartbeat and are
    /// looked at every 100 ms.
    pub fn setting(&self) -> String {
        format!(
            "local://{}?ttl_ms={}&poll_ms=100",
            self.registry.path().display(),
            RECORD_TTL.as_millis()
        )
    }

    /// The cluster's PKI.
    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }

    /// An inventory identity of the cluster's PKI, for stand-in servers
    /// the test runs itself.
    pub fn inventory_store(&self) -> Result<CertStore> {
        Ok(CertStore::load(
            self.pki.service("inventory", "inventory")?,
            Duration::from_secs(60),
        )?)
    }

    /// Starts instance `inv-<n>` on `db`, advertising `advertise` (a proxy in
    /// front of it, say) or its own address; returns its index.
    pub async fn add(&mut self, db: &TestDb, advertise: Option<SocketAddr>) -> Result<usize> {
        self.add_with(db, advertise, &[]).await
    }

    /// [`Cluster::add`] with discovery attributes (`version`, `zone`, …).
    pub async fn add_with(
        &mut self,
        db: &TestDb,
        advertise: Option<SocketAddr>,
        attributes: &[(&str, &str)],
    ) -> Result<usize> {
        let n = self.instances.len();
        let mut cfg = config(db, mtls(self.pki.service("inventory", "inventory")?, None));
        cfg.registration = Some(RegistrationConfig {
            discovery: self.setting(),
            instance_id: format!("inv-{n}"),
            advertise: advertise.map(weft_service::config::Advertise::Addr),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        cfg.drain = self.drain;
        let client = self.pki.operator("operator-cluster", "cluster")?;
        let server = Inventory::start_with(cfg, Some(client), Some(self.pki.clone())).await?;
        self.instances.push(Some(server));
        Ok(n)
    }

    /// A mesh channel to inventory through discovery, as an orders client,
    /// retrying what the contracts mark safe.
    pub async fn channel(&self, options: ClientOptions) -> Result<MeshChannel> {
        let idempotency = Idempotency::from_descriptor_sets(&[weft_proto::FILE_DESCRIPTOR_SET])?;
        self.channel_with(options, idempotency).await
    }

    /// A mesh channel that treats only the methods in `idempotency` as safe.
    pub async fn channel_with(
        &self,
        options: ClientOptions,
        idempotency: Idempotency,
    ) -> Result<MeshChannel> {
        let discovery = Discovery::from_setting(&self.setting()).await?;
        let store = CertStore::load(
            self.pki.service("orders", "orders")?,
            Duration::from_secs(60),
        )?;
        let client = MeshClient::new(discovery, Some(store), idempotency);
        Ok(client.channel_with("inventory", options)?)
    }

    /// Registers `addr` as inventory instance `id` in the cluster's
    /// discovery (for stand-in servers the test runs itself).
    pub async fn register(&self, id: &str, addr: SocketAddr) -> Result<()> {
        self.register_with(id, addr, &[]).await
    }

    /// [`Cluster::register`] with discovery attributes.
    pub async fn register_with(
        &self,
        id: &str,
        addr: SocketAddr,
        attributes: &[(&str, &str)],
    ) -> Result<()> {
        let mut registration = weft_discovery::Registration::new("inventory", id, addr);
        registration.attributes = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.stand_ins.register(&registration).await?;
        Ok(())
    }

    /// Takes stand-in instance `id` out of the cluster's discovery.
    pub async fn deregister(&self, id: &str) -> Result<()> {
        self.stand_ins.deregister("inventory", id).await?;
        Ok(())
    }

    /// Stops instance `n` through the drain protocol and waits for it.
    pub async fn stop(&mut self, n: usize) -> Result<()> {
        if let Some(server) = self.instances.get_mut(n).and_then(Option::take) {
            server.stop().await?;
        }
        Ok(())
    }

    /// Kills instance `n` at once (no drain, connections reset, record left
    /// to expire), as `kill -9` would.
    pub fn kill(&mut self, n: usize) {
        if let Some(slot) = self.instances.get_mut(n) {
            drop(slot.take());
        }
    }
}
