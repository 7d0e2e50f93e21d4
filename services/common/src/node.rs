//! A service process's place in the mesh, opened once from its
//! configuration: the discovery client that its registration and its
//! channels to other services share, the identity it serves and calls with
//! (one certificate store, one key), and the metrics registry both sides
//! report into. A service that only serves needs nothing but
//! [`crate::serve`]; one that also calls opens a node, takes its mesh
//! clients from it and serves through it:
//!
//! ```ignore
//! let node = Node::open(config).await?;
//! let mesh = node.client(&setting, &[weft_proto::FILE_DESCRIPTOR_SET]).await?;
//! let inventory = InventoryServiceClient::new(mesh.channel("inventory")?);
//! node.serve(listener, served, shutdown).await
//! ```

use std::future::Future;

use tokio::net::TcpListener;
use weft_discovery::{Discovery, DiscoveryError};
use weft_mesh::{CertStore, ClientOptions, Idempotency, LoadError, MeshClient, Routes};

use crate::config::{Config, Transport};
use crate::serve::{ServeError, Served};

/// Why a node or one of its clients could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Discovery refused the setting.
    #[error("discovery: {0}")]
    Discovery(#[from] DiscoveryError),
    /// The identity could not be loaded or issued.
    #[error("certificates: {0}")]
    Certificates(#[from] LoadError),
    /// The contracts' descriptor sets did not decode.
    #[error("descriptor sets: {0}")]
    Descriptors(#[from] prost::DecodeError),
}

impl From<NodeError> for ServeError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Discovery(e) => Self::Discovery(e),
            NodeError::Certificates(e) => Self::Certificates(e),
            NodeError::Descriptors(e) => Self::Setup(format!("descriptor sets: {e}")),
        }
    }
}

/// A service process's place in the mesh.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it was opened from.
    config: Config,
    /// The client of the discovery backend it registers in; `None` when it
    /// does not register. Channels that resolve through the same setting
    /// share it (one poller, one AWS client).
    discovery: Option<Discovery>,
    /// Its identity over mTLS, served and presented; `None` in plaintext.
    identity: Option<CertStore>,
    /// The route table its channels follow (one poller per process).
    routes: Routes,
}

impl Node {
    /// Opens discovery (when the service registers) and the identity (over
    /// mTLS; from Private CA this issues the certificate).
    pub async fn open(config: Config) -> Result<Self, NodeError> {
        let discovery = match &config.registration {
            Some(r) => Some(Discovery::from_setting(&r.discovery).await?),
            None => None,
        };
        let identity = match &config.transport {
            Transport::Mtls {
                identity,
                reload_every,
                ..
            } => Some(identity.open(*reload_every).await?),
            Transport::Plaintext => None,
        };
        let routes = match &config.routes {
            Some(setting) => {
                crate::routes::follow(setting, config.routes_poll, config.metrics.routes.clone())
                    .await
            }
            None => Routes::default(),
        };
        Ok(Self {
            config,
            discovery,
            identity,
            routes,
        })
    }

    /// The configuration it was opened from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The route table its channels follow (`WEFT_ROUTES`).
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The identity it serves and calls with (`None` in plaintext).
    pub fn identity(&self) -> Option<&CertStore> {
        self.identity.as_ref()
    }

    /// The discovery client it registers with, if it registers.
    pub fn discovery(&self) -> Option<&Discovery> {
        self.discovery.as_ref()
    }

    /// Client options that report into this service's metrics registry:
    /// start from these when changing a client's behaviour, so its figures
    /// land on the service's own /metrics.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            metrics: self.config.metrics.clone(),
            routes: self.routes.clone(),
            // Calls prefer the zone this instance registered in.
            zone: self
                .config
                .registration
                .as_ref()
                .and_then(|r| r.attributes.get("zone").cloned()),
            ..ClientOptions::default()
        }
    }

    /// A mesh client that finds services through `discovery` (the node's
    /// own client when it is the setting the node registers with), presents
    /// the node's identity, reports into its metrics with
    /// [`Node::client_options`], and retries the methods `descriptor_sets`
    /// (the callees' contracts, encoded) mark idempotent.
    pub async fn client(
        &self,
        discovery: &str,
        descriptor_sets: &[&[u8]],
    ) -> Result<MeshClient, NodeError> {
        let shared = match (&self.discovery, &self.config.registration) {
            (Some(d), Some(r)) if r.discovery == discovery => Some(d.clone()),
            _ => None,
        };
        let discovery = match shared {
            Some(d) => d,
            None => Discovery::from_setting(discovery).await?,
        };
        let idempotency = Idempotency::from_descriptor_sets(descriptor_sets)?;
        Ok(
            MeshClient::new(discovery, self.identity.clone(), idempotency)
                .with_options(self.client_options()),
        )
    }

    /// Serves `served` on `listener` until `shutdown` resolves (see
    /// [`crate::serve`]), registering with the node's discovery client and
    /// serving with its identity.
    pub async fn serve(
        &self,
        listener: TcpListener,
        served: Served,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        crate::serve::serve_node(listener, self, served, shutdown).await
    }
}
