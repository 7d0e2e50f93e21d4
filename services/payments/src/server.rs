//! Payments' entry point for binaries and tests: `run(listener, config,
//! shutdown)` migrates the database, then serves the API until `shutdown`
//! resolves (see `weft_service::serve` for everything around it).

use std::future::Future;

use tokio::net::TcpListener;
use tonic::service::Routes;
use weft_proto::payments::v1::payments_service_server::{PaymentsServiceServer, SERVICE_NAME};
use weft_service::{Config, ServeError, Served};

use crate::api::PaymentsApi;
use crate::store::Store;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Payments's schema migrations (for tools that run them apart from
/// the server; the server runs them at start).
pub fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

/// The name payments registers under and its certificates carry.
pub const NAME: &str = "payments";

/// Where payments listens on one machine when `WEFT_LISTEN` and
/// `WEFT_METRICS_ADDR` do not say (each service its own ports, so all run
/// side by side).
pub const DEFAULTS: weft_service::Defaults = weft_service::Defaults {
    listen: "127.0.0.1:7002",
    metrics: "127.0.0.1:9102",
};

/// Serves payments on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight calls finish, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let runner = embedded::migrations::runner();
    weft_service::migrate(&config, runner, "payments").await?;
    let store = Store::new(&config).map_err(|e| ServeError::Pool(e.to_string()))?;
    let db = store.db().clone();
    // Idempotency records past the replay window go, while the server runs.
    let _sweeper = weft_service::db::spawn_sweeper(
        db.clone(),
        "payments.idempotency_keys",
        config.idempotency_retention,
    );
    let api = PaymentsServiceServer::new(PaymentsApi::new(store))
        .max_decoding_message_size(config.max_message_bytes);
    let served = Served::new(NAME, SERVICE_NAME, Routes::new(api), db);
    weft_service::serve(listener, &config, served, shutdown).await
}
