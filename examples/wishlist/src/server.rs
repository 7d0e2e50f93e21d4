//! Wishlist's entry point for binaries and tests: `run(listener, config,
//! shutdown)` migrates the database, connects to inventory, and serves the
//! API until `shutdown` resolves (see `weft_service::serve` for everything
//! around it: mTLS, policy, health, reflection, registration, the drain).

use std::future::Future;

use tokio::net::TcpListener;
use tonic::service::Routes;
use weft_service::{Node, ServeError, Served};

use crate::api::WishlistApi;
use crate::config::WishlistConfig;
use crate::inventory::Inventory;
use crate::pb::wishlist_service_server::{SERVICE_NAME, WishlistServiceServer};
use crate::store::Store;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Wishlist's schema migrations (for tools that run them apart from the
/// server; the server runs them at start).
pub fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

/// The name wishlist registers under and its certificates carry.
pub const NAME: &str = "wishlist";

/// Where wishlist listens on one machine when `WEFT_LISTEN` and
/// `WEFT_METRICS_ADDR` do not say: ports of its own, beside Weft's three
/// services (7001-7003, 9101-9103).
pub const DEFAULTS: weft_service::Defaults = weft_service::Defaults {
    listen: "127.0.0.1:7004",
    metrics: "127.0.0.1:9104",
};

/// Serves wishlist on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight calls finish, and returns.
pub async fn run(
    listener: TcpListener,
    config: WishlistConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let service = &config.service;
    weft_service::migrate(service, migrations(), NAME).await?;
    let store = Store::new(service).map_err(|e| ServeError::Pool(e.to_string()))?;
    // The node: one discovery client and one identity for registering,
    // serving and calling inventory.
    let node = Node::open(service.clone()).await?;
    let inventory = Inventory::connect(&node, &config.discovery, config.inventory_timeout)
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let db = store.db().clone();
    let api = WishlistServiceServer::new(WishlistApi::new(store, inventory))
        .max_decoding_message_size(service.max_message_bytes);
    // Ready while the database answers; inventory being away makes AddItem
    // fail, not the whole service (ListItems and RemoveItem still work).
    // Reflection describes the wishlist contract, and metrics label its
    // methods by name, from the descriptor set the build script wrote.
    let served = Served::new(NAME, SERVICE_NAME, Routes::new(api), db)
        .with_descriptors(crate::FILE_DESCRIPTOR_SET);
    node.serve(listener, served, shutdown).await
}
