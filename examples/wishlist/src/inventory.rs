//! Wishlist's client of Weft's inventory service: one mesh channel that finds
//! inventory's instances through discovery, balances across them, retries
//! what inventory's contract marks safe (GetProduct is NO_SIDE_EFFECTS), and
//! over mTLS presents wishlist's own identity and accepts only inventory's.

use std::time::Duration;

use tonic::Code;
use weft_mesh::{ClientOptions, MeshChannel};
use weft_proto::inventory::v1::GetProductRequest;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_service::{Money, Node};

/// What wishlist keeps of a product: its name and price now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The SKU.
    pub sku: String,
    /// The name.
    pub name: String,
    /// The price of one unit.
    pub unit_price: Money,
}

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node could not open a mesh client (discovery, descriptors).
    #[error(transparent)]
    Node(#[from] weft_service::NodeError),
    /// The channel could not be made.
    #[error(transparent)]
    Mesh(#[from] weft_mesh::MeshClientError),
}

/// Why a product could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Inventory has no product with the SKU.
    #[error("product {0:?} not found in inventory")]
    NotFound(String),
    /// Inventory could not be reached (or answered that it is overloaded):
    /// the caller may try again.
    #[error("inventory unavailable: {0}")]
    Unavailable(String),
    /// Inventory answered something wishlist cannot act on (a refused
    /// call, a broken answer): a fault to log, not to show.
    #[error("inventory failed: {0}")]
    Failed(String),
}

/// Inventory, through the mesh.
#[derive(Debug, Clone)]
pub struct Inventory {
    client: InventoryServiceClient<MeshChannel>,
}

impl Inventory {
    /// A channel to inventory from the service's node: found through
    /// `discovery` (a `WEFT_DISCOVERY` setting; the node's own client when
    /// it registers there), over mTLS with the service's own identity, its
    /// figures in the service's metrics. A call that carries no deadline of
    /// its own gets `timeout`, retries included.
    pub async fn connect(
        node: &Node,
        discovery: &str,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        // Inventory's descriptors say which of its methods are safe to retry.
        let mesh = node
            .client(discovery, &[weft_proto::FILE_DESCRIPTOR_SET])
            .await?
            .with_options(ClientOptions {
                default_timeout: Some(timeout),
                ..node.client_options()
            });
        Ok(Self {
            client: InventoryServiceClient::new(mesh.channel("inventory")?),
        })
    }

    /// The product with `sku`, as inventory has it now.
    pub async fn product(&self, sku: &str) -> Result<Product, LookupError> {
        let request = GetProductRequest {
            sku: sku.to_owned(),
        };
        let answer = self.client.clone().get_product(request).await;
        let product = match answer {
            Ok(response) => response.into_inner().product,
            Err(status) => return Err(lookup_error(sku, &status)),
        };
        let product =
            product.ok_or_else(|| LookupError::Failed("answer without a product".into()))?;
        let price = product
            .unit_price
            .ok_or_else(|| LookupError::Failed(format!("product {sku:?} without a price")))?;
        Ok(Product {
            sku: product.sku,
            name: product.name,
            unit_price: Money::new(price.amount_minor, price.currency_code),
        })
    }
}

/// Sorts inventory's status by what wishlist's caller can do about it.
fn lookup_error(sku: &str, status: &tonic::Status) -> LookupError {
    match status.code() {
        Code::NotFound => LookupError::NotFound(sku.to_owned()),
        // The mesh answers UNAVAILABLE when no instance can be reached, and
        // DEADLINE_EXCEEDED when none answered in time.
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
            LookupError::Unavailable(format!("{:?}: {}", status.code(), status.message()))
        }
        // PERMISSION_DENIED here means inventory's policy lacks wishlist's
        // rule: an operator's mistake, never the caller's.
        code => LookupError::Failed(format!("{code:?}: {}", status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_what_the_caller_can_do() {
        let sort = |code| lookup_error("WIDGET-1", &tonic::Status::new(code, "detail"));
        assert!(matches!(sort(Code::NotFound), LookupError::NotFound(s) if s == "WIDGET-1"));
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            assert!(
                matches!(sort(code), LookupError::Unavailable(_)),
                "{code:?}"
            );
        }
        for code in [
            Code::PermissionDenied,
            Code::Internal,
            Code::InvalidArgument,
        ] {
            assert!(matches!(sort(code), LookupError::Failed(_)), "{code:?}");
        }
    }
}
