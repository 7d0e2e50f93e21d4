//! Orders' clients of inventory and payments: mesh channels that find the
//! instances through discovery, balance across them, retry what the
//! contracts mark safe, and (over mTLS) accept only the expected identity.

use std::time::Duration;

use weft_mesh::{ClientOptions, MeshChannel};
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_service::Node;

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
    /// The node could not open a client (discovery, descriptors).
    #[error(transparent)]
    Node(#[from] weft_service::NodeError),
    /// A channel could not be made.
    #[error(transparent)]
    Mesh(#[from] weft_mesh::MeshClientError),
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
    /// Resolves both services through the node (sharing its discovery
    /// client and identity when the settings match) and builds their
    /// channels.
    pub async fn connect(node: &Node, config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let mesh = node
            .client(&config.discovery, &[weft_proto::FILE_DESCRIPTOR_SET])
            .await?
            .with_options(config.client.clone());
        Ok(Self {
            inventory: InventoryServiceClient::new(mesh.channel("inventory")?),
            payments: PaymentsServiceClient::new(mesh.channel("payments")?),
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
