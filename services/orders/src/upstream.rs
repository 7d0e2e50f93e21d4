//! Orders' clients of inventory and payments: mesh channels that find the
//! instances through discovery, balance across them, retry what the
//! contracts mark safe, and (over mTLS) accept only the expected identity.

use std::sync::Arc;
use std::time::Duration;

use weft_discovery::{Discovery, Filter, Resolver};
use weft_mesh::{ClientOptions, Idempotency, MeshChannel, SpiffeId};
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_service::Transport;

/// How orders reaches the services it calls.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The discovery setting to resolve inventory and payments with.
    pub discovery: String,
    /// The client stack's behaviour.
    pub client: ClientOptions,
    /// How long one call may take, retries included.
    pub call_timeout: Duration,
}

/// Why the clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Discovery refused the setting or the watch.
    #[error("discovery: {0}")]
    Discovery(#[from] weft_discovery::DiscoveryError),
    /// The certificates could not be loaded.
    #[error("certificates: {0}")]
    Certificates(#[from] weft_mesh::LoadError),
    /// The identity of a peer could not be formed.
    #[error("identity: {0}")]
    Identity(#[from] weft_mesh::IdentityError),
    /// TLS refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The contracts' descriptors did not decode.
    #[error("descriptors: {0}")]
    Descriptors(#[from] prost::DecodeError),
}

/// Clients of the two services the saga calls.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Inventory.
    pub inventory: InventoryServiceClient<MeshChannel>,
    /// Payments.
    pub payments: PaymentsServiceClient<MeshChannel>,
    /// The bound on each call.
    pub call_timeout: Duration,
}

impl Upstreams {
    /// Resolves both services and builds their channels, over mTLS with the
    /// service's own identity or in plaintext as the transport says.
    pub async fn connect(
        config: &UpstreamConfig,
        transport: &Transport,
    ) -> Result<Self, UpstreamError> {
        let discovery = Discovery::from_setting(&config.discovery).await?;
        let idempotency = Arc::new(Idempotency::from_descriptor_sets(&[
            weft_proto::FILE_DESCRIPTOR_SET,
        ])?);
        let store = match transport {
            Transport::Mtls {
                identity,
                reload_every,
                ..
            } => Some(identity.open(*reload_every).await?),
            Transport::Plaintext => None,
        };
        let channel = |service: &'static str| -> Result<MeshChannel, UpstreamError> {
            let endpoints = discovery.watch(service, &Filter::any())?;
            Ok(match &store {
                Some(store) => {
                    let own = store.current().id;
                    let expected = SpiffeId::service(own.trust_domain(), service)?;
                    MeshChannel::mtls(
                        service,
                        endpoints,
                        store,
                        expected,
                        idempotency.clone(),
                        config.client.clone(),
                    )?
                }
                None => MeshChannel::plaintext(
                    service,
                    endpoints,
                    idempotency.clone(),
                    config.client.clone(),
                ),
            })
        };
        Ok(Self {
            inventory: InventoryServiceClient::new(channel("inventory")?),
            payments: PaymentsServiceClient::new(channel("payments")?),
            call_timeout: config.call_timeout,
        })
    }

    /// A request bounded by the call timeout.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.call_timeout);
        request
    }
}
