//! Serving a Weft service: mTLS (or development plaintext), authorization
//! and deadlines, grpc.health.v1 tied to readiness (registered and the
//! database answering) with a separate liveness entry for container health
//! checks, reflection of what is served, registration in discovery (in the
//! background, with backoff), and the drain, until shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use weft_discovery::Health;
use weft_discovery::backoff::Backoff;
use weft_mesh::{
    AuthorizeLayer, CertStore, DeadlineLayer, LoadGauge, LoadReportLayer, Metrics, ObserveLayer,
    Policy, RateLimitLayer, RetriesLayer, SharedPolicy, serve_with_drain, server_config,
    tls_incoming,
};

use crate::config::{Config, Transport};
use crate::migrate::MigrateError;
use crate::registration::{Pending, Registered};
use crate::routes::SourceSetting;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The schema could not be brought up to date.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The pool could not be built.
    #[error("database pool: {0}")]
    Pool(String),
    /// The service could not be set up.
    #[error("{0}")]
    Setup(String),
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

/// The grpc.health.v1 entry that says the process is alive: NOT_SERVING
/// until the service has been ready once, then SERVING until it stops, even
/// while its database is away. Container health checks ask it, so a
/// database failover does not make ECS replace every task at once, while a
/// task that never becomes ready still fails its check.
pub const LIVENESS: &str = "weft.liveness";

/// The most one registration attempt may take before it counts as failed.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers whether the service's dependencies answer: the readiness probe
/// behind health and discovery.
pub type Ping =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What a service hands to [`serve`].
pub struct Served {
    /// The name it registers under and its certificates name (`inventory`).
    pub name: &'static str,
    /// Its gRPC service (`weft.inventory.v1.InventoryService`).
    pub grpc_service: &'static str,
    /// The API's routes.
    pub routes: Routes,
    /// The readiness probe.
    pub ping: Ping,
    /// The database pool, reported in the metrics.
    pub db: Option<crate::Db>,
    /// Encoded `FileDescriptorSet`s that describe the service, served by
    /// reflection (grpcurl, `weft call`); Weft's own contracts are always
    /// there, a service of another contract adds its own with
    /// [`Served::with_descriptors`].
    pub descriptor_sets: Vec<&'static [u8]>,
}

impl Served {
    /// A service whose readiness is its database's.
    pub fn new(
        name: &'static str,
        grpc_service: &'static str,
        routes: Routes,
        db: crate::Db,
    ) -> Self {
        Self {
            name,
            grpc_service,
            routes,
            db: Some(db.clone()),
            ping: Arc::new(move || {
                let db = db.clone();
                Box::pin(async move { db.ping().await.map_err(|e| e.to_string()) })
            }),
            descriptor_sets: vec![weft_proto::FILE_DESCRIPTOR_SET],
        }
    }

    /// Adds the descriptor set of the service's own contract (what its
    /// build script wrote from its `.proto` files), so reflection can
    /// describe it.
    pub fn with_descriptors(mut self, set: &'static [u8]) -> Self {
        self.descriptor_sets.push(set);
        self
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("name", &self.name)
            .field("grpc_service", &self.grpc_service)
            .finish_non_exhaustive()
    }
}

/// Serves `served` on `listener` until `shutdown` resolves, then drains:
/// stops accepting, lets in-flight calls finish, and returns.
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    served: Served,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let node = crate::Node::open(config.clone()).await?;
    serve_node(listener, &node, served, shutdown).await
}

/// [`serve`] with what the node opened: its discovery client and identity.
pub(crate) async fn serve_node(
    listener: TcpListener,
    node: &crate::Node,
    served: Served,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let config = node.config();
    let Served {
        name,
        grpc_service,
        routes,
        ping,
        db,
        descriptor_sets,
    } = served;
    // The pool is reported while the server runs.
    let serving = Arc::new(());
    if let Some(db) = &db {
        report_pool(&config.metrics, db.clone(), Arc::downgrade(&serving));
    }
    // What /ready and /live on the metrics listener answer (ready turns false once
    // the drain begins).
    let probes = Arc::new(crate::metrics_endpoint::Probes::default());
    let _metrics_endpoint = match config.metrics_addr {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            let _ = config.metrics_bound.set(bound);
            tracing::info!(%bound, "metrics on http://{bound}/metrics");
            Some(AbortOnDrop(tokio::spawn(
                crate::metrics_endpoint::serve_metrics(
                    listener,
                    config.metrics.clone(),
                    probes.clone(),
                ),
            )))
        }
    };
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(LIVENESS, ServingStatus::NotServing)
        .await;
    let pending = match (&config.registration, node.discovery()) {
        (Some(r), Some(discovery)) => Some(Pending::new(
            name,
            r,
            discovery.clone(),
            listener.local_addr()?,
        )?),
        _ => None,
    };
    // Set once registration succeeds; the drain deregisters what is here.
    let registered: Arc<OnceLock<Registered>> = Arc::new(OnceLock::new());
    // Aborted with the server, however it ends (a dropped server must not
    // keep reporting itself healthy).
    let health_task = AbortOnDrop(tokio::spawn(watch_readiness(
        ping,
        reporter.clone(),
        grpc_service,
        config.health_interval,
        pending,
        registered.clone(),
        probes.clone(),
    )));

    // Advertise only what this server serves: the shared descriptor set also
    // describes the other services.
    let reflection = || {
        descriptor_sets
            .iter()
            .fold(tonic_reflection::server::Builder::configure(), |b, set| {
                b.register_encoded_file_descriptor_set(set)
            })
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(grpc_service)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let addr = listener.local_addr().ok();
    let (policy, trust_domain, tls) = match &config.transport {
        Transport::Mtls { policy, .. } => {
            let store = node
                .identity()
                .cloned()
                .ok_or_else(|| ServeError::Setup("mTLS without an identity".into()))?;
            let id = store.current().id;
            if id.name() != name {
                tracing::warn!(%id, "serving {name} with a certificate for another identity");
            }
            if policy.is_none() {
                tracing::warn!(%id, "no policy: every caller of trust domain {} may call everything", id.trust_domain());
            }
            tracing::info!(?addr, %id, policy = policy.is_some(), "{name} serving mTLS");
            report_certificate(&config.metrics, store.clone(), Arc::downgrade(&serving));
            (
                policy.clone().map(SharedPolicy::new),
                id.trust_domain().to_owned(),
                Some((server_config(&store)?, store.clone())),
            )
        }
        Transport::Plaintext => {
            tracing::warn!(
                ?addr,
                "{name} serving PLAINTEXT: no caller is authenticated; for development only"
            );
            (None, String::new(), None)
        }
    };
    // A policy file that changes is applied without a restart: the
    // authorization and rate limits read the policy on every call.
    let _policy_follower = match (&policy, &config.policy_source) {
        (Some(shared), Some(source)) => {
            if let SourceSetting::Ssm(_) = source {
                shared.store(Arc::new(
                    first_policy(source, config.startup_timeout).await?,
                ));
            }
            Some(AbortOnDrop(tokio::spawn(follow_policy(
                shared.clone(),
                source.clone(),
                config.policy_poll,
                config.metrics.policy.clone(),
            ))))
        }
        _ => None,
    };
    // Every response says how loaded this instance is, for the balancers.
    let load = Arc::new(LoadGauge::default());
    let _load_sampler = AbortOnDrop(tokio::spawn(crate::load::sample(load.clone(), db.clone())));
    let router = config
        .limits
        .server()
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .layer(ObserveLayer::new(
            config.metrics.clone(),
            served_paths(&descriptor_sets, grpc_service),
        ))
        .layer(AuthorizeLayer::shared(policy.clone(), &trust_domain))
        .layer(RateLimitLayer::new(
            policy,
            &trust_domain,
            config.metrics.clone(),
        ))
        .layer(DeadlineLayer)
        .layer(RetriesLayer)
        .layer(LoadReportLayer::new(load))
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // The drain: stop the health watcher (it would report SERVING again),
    // say NOT_SERVING so health watchers move away, and leave discovery so
    // pollers do; the listener stays open for the drain period.
    let health_abort = health_task.0.abort_handle();
    let mut closing_reporter = reporter.clone();
    let on_drain = async move {
        health_abort.abort();
        probes.ready.store(false, Ordering::Relaxed);
        set_health(&reporter, grpc_service, ServingStatus::NotServing).await;
        if let Some(r) = registered.get() {
            r.set_health(Health::Unhealthy).await;
            r.deregister().await;
        }
    };
    tracing::info!(
        worst_case = ?config.drain.worst_case(),
        "on SIGTERM: discovery told within {:?}, drain {:?}, in-flight calls within {:?}",
        config.drain.notify_budget,
        config.drain.drain_period,
        config.drain.grace_period
    );
    let served = serve_with_drain(
        config.drain,
        shutdown,
        on_drain,
        move |stop_accepting| async move {
            // When the drain period is over, end every health watch (clients
            // have seen NOT_SERVING and moved away): a watch is a call that
            // never finishes by itself, and would hold its connection, and
            // so the shutdown, for the whole grace period.
            let stop_accepting = async move {
                stop_accepting.await;
                for service in ["", grpc_service, LIVENESS] {
                    closing_reporter.clear_service_status(service).await;
                }
            };
            match tls {
                Some((tls, store)) => {
                    router
                        .serve_with_incoming_shutdown(
                            tls_incoming(listener, tls, &store, &config.limits),
                            stop_accepting,
                        )
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
    drop(serving);
    served?;
    Ok(())
}

/// Every method this server answers: its own service's, grpc.health.v1's
/// and reflection's (metrics label every other path `unknown`).
fn served_paths(
    descriptor_sets: &[&'static [u8]],
    grpc_service: &str,
) -> std::collections::HashSet<String> {
    let mut sets = descriptor_sets.to_vec();
    sets.push(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let mut paths =
        weft_mesh::observe::served_paths(&sets, &[grpc_service, "grpc.health.v1.Health"]);
    // Reflection's two versions, one method each.
    paths.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned());
    paths.insert("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_owned());
    paths
}

/// Reports the time left on the served certificate at each scrape (the
/// store reloads it, so this follows renewals), while the server lives.
fn report_certificate(metrics: &Metrics, store: CertStore, serving: std::sync::Weak<()>) {
    let gauge = metrics.tls_certificate_expiry.clone();
    metrics.on_scrape(move || {
        if serving.strong_count() == 0 {
            return false;
        }
        let not_after = store.current().not_after;
        let left = match not_after.duration_since(std::time::SystemTime::now()) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        };
        gauge.set(left);
        true
    });
}

/// A database pool's connections in one state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DbPoolState {
    /// `idle`, `in_use`, `waiting` (calls waiting for one) or `max`.
    state: String,
}

/// Reports the database pool at each scrape, while the pool lives, as
/// `weft_db_pool_connections` (a family of the service's own in the mesh's
/// registry).
fn report_pool(metrics: &Metrics, db: crate::Db, serving: std::sync::Weak<()>) {
    let family: prometheus_client::metrics::family::Family<
        DbPoolState,
        prometheus_client::metrics::gauge::Gauge,
    > = metrics.family("db_pool_connections", "The database pool, by state");
    let gauge = |state: &str| {
        family
            .get_or_create(&DbPoolState {
                state: state.to_owned(),
            })
            .clone()
    };
    let (idle, in_use, waiting, max) = (
        gauge("idle"),
        gauge("in_use"),
        gauge("waiting"),
        gauge("max"),
    );
    metrics.on_scrape(move || {
        if serving.strong_count() == 0 {
            return false;
        }
        let status = db.status();
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        idle.set(n(status.available));
        in_use.set(n(status.size.saturating_sub(status.available)));
        waiting.set(n(status.waiting));
        max.set(n(status.max_size));
        true
    });
}

/// Registers in discovery (retrying with backoff while the backend cannot be
/// reached: the server already answers, NOT_SERVING) and then keeps
/// grpc.health.v1 and discovery in step with readiness: SERVING only while
/// registered and the probe answers, for the whole server ("") and for the
/// gRPC service. Liveness turns SERVING the first time the service is ready.
async fn watch_readiness(
    ping: Ping,
    reporter: HealthReporter,
    grpc_service: &'static str,
    every: Duration,
    pending: Option<Pending>,
    registered: Arc<OnceLock<Registered>>,
    probes: Arc<crate::metrics_endpoint::Probes>,
) {
    if let Some(pending) = pending {
        set_health(&reporter, grpc_service, ServingStatus::NotServing).await;
        let mut backoff = Backoff::new(
            Duration::from_millis(500),
            2.0,
            Duration::from_secs(30),
            0.2,
        );
        loop {
            let attempt = tokio::time::timeout(REGISTER_TIMEOUT, pending.register()).await;
            let error = match attempt {
                Ok(Ok(r)) => {
                    let _ = registered.set(r);
                    break;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {REGISTER_TIMEOUT:?}"),
            };
            let delay = backoff.next_delay();
            tracing::warn!(
                discovery = pending.setting(),
                attempt = backoff.attempts(),
                "cannot register at {}: {error}; retrying in {delay:?} (serving NOT_SERVING until then)",
                pending.setting()
            );
            tokio::time::sleep(delay).await;
        }
    }
    let mut last = None;
    // What discovery last took; reported again until it does.
    let mut reported = None;
    let mut live = false;
    loop {
        let status = match ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                ServingStatus::NotServing
            }
        };
        if status == ServingStatus::Serving && !live {
            reporter
                .set_service_status(LIVENESS, ServingStatus::Serving)
                .await;
            probes.alive.store(true, Ordering::Relaxed);
            live = true;
        }
        probes
            .ready
            .store(status == ServingStatus::Serving, Ordering::Relaxed);
        if last != Some(status) {
            tracing::info!(?status, "health changed");
            set_health(&reporter, grpc_service, status).await;
            last = Some(status);
        }
        let health = if status == ServingStatus::Serving {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        if let Some(r) = registered.get()
            && reported != Some(health)
            && r.set_health(health).await
        {
            reported = Some(health);
        }
        tokio::time::sleep(every).await;
    }
}

async fn set_health(reporter: &HealthReporter, grpc_service: &str, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(grpc_service, status).await;
}

/// Aborts a task when dropped: background work that must end with the
/// server, however the server ends.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

/// A policy from its source's text: a file or parameter that is gone is
/// refused like a malformed one (no policy would let every caller through).
fn parse_policy(text: Option<&str>) -> Result<Policy, String> {
    match text {
        None => Err("the policy is gone from its source".into()),
        Some(t) => Policy::from_toml(t).map_err(|e| e.to_string()),
    }
}

/// The policy in an SSM parameter as the server starts: read with backoff
/// for up to `within` (the parameter store may be slow to answer a task
/// that just started), and it must parse.
async fn first_policy(source: &SourceSetting, within: Duration) -> Result<Policy, ServeError> {
    let deadline = tokio::time::Instant::now() + within;
    let mut backoff = Backoff::new(Duration::from_millis(200), 2.0, Duration::from_secs(5), 0.2);
    loop {
        match source.read().await {
            Ok(text) => {
                return parse_policy(text.as_deref())
                    .map_err(|e| ServeError::Setup(format!("the policy in {source}: {e}")));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(ServeError::Setup(format!(
                    "reading the policy in {source}: {e}"
                )));
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(%source, error = %e, ?delay, "cannot read the policy yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reads the policy's source every `every` and swaps each new policy into
/// `shared`; a malformed one is refused (logged, counted in
/// `weft_policy_rejected_total`) and the policy in use kept.
async fn follow_policy(
    shared: SharedPolicy,
    source: SourceSetting,
    every: Duration,
    events: weft_mesh::SourceEvents,
) {
    let initial = Policy::clone(&shared.load());
    let live = crate::routes::follow_live(&source, every, events, initial, parse_policy).await;
    let mut changes = live.watch();
    shared.store(changes.borrow_and_update().clone());
    while changes.changed().await.is_ok() {
        shared.store(changes.borrow_and_update().clone());
        tracing::info!("policy reloaded");
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
