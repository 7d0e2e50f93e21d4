//! Inventory's entry point for binaries and tests: `run(listener, config,
//! shutdown)` migrates the database, then serves the API, grpc.health.v1 tied
//! to the database, and reflection, until `shutdown` resolves.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use weft_proto::inventory::v1::inventory_service_server::{InventoryServiceServer, SERVICE_NAME};

use crate::api::InventoryApi;
use weft_discovery::Health;
use weft_mesh::{
    AuthorizeLayer, CertStore, DeadlineLayer, serve_with_drain, server_config, tls_incoming,
};

use crate::config::{Config, Transport};
use crate::migrate::{MigrateError, migrate};
use crate::registration::Registered;
use crate::store::Store;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The schema could not be brought up to date.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The pool could not be built.
    #[error("database pool: {0}")]
    Pool(String),
    /// The certificates could not be loaded.
    #[error("certificates: {0}")]
    Certificates(#[from] weft_mesh::LoadError),
    /// TLS refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Reflection could not load the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Registering in discovery failed.
    #[error("discovery: {0}")]
    Discovery(#[from] weft_discovery::DiscoveryError),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves inventory on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight calls finish, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    migrate(&config.database, config.startup_timeout).await?;
    let store = Store::new(config.database.clone(), config.pool_size, config.db_timeout)
        .map_err(|e| ServeError::Pool(e.to_string()))?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let registered = match &config.registration {
        Some(r) => Some(Registered::register(r, listener.local_addr()?).await?),
        None => None,
    };
    // Aborted with the server, however it ends (a dropped server must not
    // keep reporting itself healthy).
    let health_task = AbortOnDrop(tokio::spawn(watch_database(
        store.clone(),
        reporter.clone(),
        config.health_interval,
        registered.clone(),
    )));

    // Advertise only what this server serves: the shared descriptor set also
    // describes payments and orders.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(weft_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(SERVICE_NAME)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let api = InventoryServiceServer::new(InventoryApi::new(store))
        .max_decoding_message_size(config.max_message_bytes);

    let addr = listener.local_addr().ok();
    let (policy, tls) = match &config.transport {
        Transport::Mtls {
            identity,
            policy,
            reload_every,
        } => {
            let store = CertStore::load(identity.clone(), *reload_every)?;
            let id = store.current().id;
            if id.name() != "inventory" {
                tracing::warn!(%id, "serving inventory with a certificate for another identity");
            }
            tracing::info!(?addr, %id, policy = policy.is_some(), "inventory serving mTLS");
            (policy.clone(), Some(server_config(&store)?))
        }
        Transport::Plaintext => {
            tracing::warn!(
                ?addr,
                "inventory serving PLAINTEXT: no caller is authenticated; for development only"
            );
            (None, None)
        }
    };
    let router = Server::builder()
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .layer(AuthorizeLayer::new(policy))
        .layer(DeadlineLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api);
    // The drain: stop the health watcher (it would report SERVING again),
    // say NOT_SERVING so health watchers move away, and leave discovery so
    // pollers do; the listener stays open for the drain period.
    let health_abort = health_task.0.abort_handle();
    let on_drain = async move {
        health_abort.abort();
        set_health(&reporter, ServingStatus::NotServing).await;
        if let Some(r) = &registered {
            r.set_health(Health::Unhealthy).await;
            r.deregister().await;
        }
    };
    let served = serve_with_drain(
        config.drain,
        shutdown,
        on_drain,
        move |stop_accepting| async move {
            match tls {
                Some(tls) => {
                    router
                        .serve_with_incoming_shutdown(tls_incoming(listener, tls), stop_accepting)
                        .await
                }
                None => {
                    // Nagle off, as on the mTLS path: small gRPC frames go out at once.
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    router
                        .serve_with_incoming_shutdown(incoming, stop_accepting)
                        .await
                }
            }
        },
    )
    .await;
    drop(health_task);
    served?;
    Ok(())
}

/// Keeps grpc.health.v1 in step with the database: SERVING only while it
/// answers, for the whole server ("") and for the inventory service.
async fn watch_database(
    store: Store,
    reporter: HealthReporter,
    every: std::time::Duration,
    registered: Option<Registered>,
) {
    let mut last = None;
    loop {
        let status = match store.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(e) => {
                tracing::warn!(error = %e, "database check failed");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            tracing::info!(?status, "health changed");
            set_health(&reporter, status).await;
            if let Some(r) = &registered {
                r.set_health(if status == ServingStatus::Serving {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                })
                .await;
            }
            last = Some(status);
        }
        tokio::time::sleep(every).await;
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
