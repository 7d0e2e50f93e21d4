//! Orders' entry point for binaries and tests: `run(listener, config,
//! shutdown)` migrates the database, connects to inventory and payments,
//! resumes unsettled sagas, and serves the API until `shutdown` resolves.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};

use tokio::net::TcpListener;
use tonic::service::Routes;
use weft_proto::orders::v1::orders_service_server::{OrdersServiceServer, SERVICE_NAME};
use weft_service::{AbortOnDrop, Node, ServeError, Served};

use crate::api::OrdersApi;
use crate::config::OrdersConfig;
use crate::merchant::{self, MerchantSetting};
use crate::saga::Saga;
use crate::store::Store;
use crate::upstream::Upstreams;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Orders's schema migrations (for tools that run them apart from
/// the server; the server runs them at start).
pub fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

/// The name orders registers under and its certificates carry.
pub const NAME: &str = "orders";

/// Where orders listens on one machine when `WEFT_LISTEN` and
/// `WEFT_METRICS_ADDR` do not say (each service its own ports, so all run
/// side by side).
pub const DEFAULTS: weft_service::Defaults = weft_service::Defaults {
    listen: "127.0.0.1:7003",
    metrics: "127.0.0.1:9103",
};

/// Serves orders on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight calls finish, and returns.
pub async fn run(
    listener: TcpListener,
    config: OrdersConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let service = &config.service;
    let runner = embedded::migrations::runner();
    weft_service::migrate(service, runner, "orders").await?;
    let store = Store::new(service).map_err(|e| ServeError::Pool(e.to_string()))?;
    // One discovery client and one identity for registering, serving and
    // calling inventory and payments.
    let node = Node::open(service.clone()).await?;
    let upstream = Upstreams::connect(&node, &config.upstream)
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    // Captures must have somewhere to go before any order is taken.
    let merchant = MerchantSetting::parse(&config.merchant_account_id)
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let merchant_account_id = merchant::settle(&upstream, &merchant, service.startup_timeout)
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;

    // Leases name the instance and this run of it: a restarted instance
    // lets go of its earlier run's leases and resumes those sagas at once.
    let run = RandomState::new().build_hasher().finish();
    let owner = format!("{}:{run:016x}", config.instance_id);
    match store.release_leases_of(&config.instance_id).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(sagas = n, "resuming sagas of an earlier run"),
        Err(e) => tracing::warn!(error = %e, "could not release an earlier run's leases"),
    }
    let db = store.db().clone();
    let saga = Saga::new(
        store.clone(),
        upstream,
        owner,
        merchant_account_id,
        config.saga.clone(),
    );
    let recovery = AbortOnDrop(tokio::spawn(crate::recovery::run(saga.clone())));

    let api = OrdersServiceServer::new(OrdersApi::new(saga, store, config.wait))
        .max_decoding_message_size(service.max_message_bytes);
    let served = Served::new(NAME, SERVICE_NAME, Routes::new(api), db);
    let result = node.serve(listener, served, shutdown).await;
    drop(recovery);
    result
}
