//! The mesh's golden metrics, in one registry per process, rendered in the
//! Prometheus text format: per service, method and peer on both sides of a
//! call (requests, responses by gRPC status, latency), the client's pools
//! (endpoints, ejections, reconnects, retries and budget refusals), discovery
//! staleness and errors, and whatever a service adds (its database pool)
//! through hooks run at each scrape.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A call as a server sees it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerCall {
    /// The gRPC service (`weft.inventory.v1.InventoryService`).
    pub grpc_service: String,
    /// The method (`ReserveStock`).
    pub grpc_method: String,
    /// The caller's identity (`spiffe://…`), or `unauthenticated`.
    pub peer: String,
}

/// A finished call as a server sees it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerResult {
    /// The gRPC service.
    pub grpc_service: String,
    /// The method.
    pub grpc_method: String,
    /// The caller's identity.
    pub peer: String,
    /// The status code's name (`OK`, `UNAVAILABLE`, …).
    pub grpc_code: String,
}

/// A call as a client sees it: to which upstream, which endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientCall {
    /// The upstream's name in discovery (`inventory`).
    pub upstream: String,
    /// The method's full path (`weft.inventory.v1.InventoryService/ReserveStock`).
    pub grpc_method: String,
    /// The endpoint's address.
    pub peer: String,
}

/// A finished call as a client sees it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientResult {
    /// The upstream's name.
    pub upstream: String,
    /// The method's full path.
    pub grpc_method: String,
    /// The endpoint's address.
    pub peer: String,
    /// The status code's name.
    pub grpc_code: String,
}

/// A `[[limit]]` rule of the policy.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitRule {
    /// Its position among the policy's limits, from 1.
    pub limit: String,
}

/// One upstream (or discovered service).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Upstream {
    /// Its name in discovery.
    pub upstream: String,
}

/// One upstream's method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamMethod {
    /// Its name in discovery.
    pub upstream: String,
    /// The method's full path.
    pub grpc_method: String,
}

/// The endpoints of an upstream in one state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolState {
    /// Its name in discovery.
    pub upstream: String,
    /// `available` or `unavailable` (connecting, ejected, not serving).
    pub state: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;
type Hook = Box<dyn Fn() -> bool + Send + Sync>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric the mesh keeps. Clone a family's handle to update it.
pub struct Metrics {
    registry: Mutex<Registry>,
    hooks: Mutex<Vec<Hook>>,
    /// Families a process adds of its own ([`Metrics::family`]), by name.
    own: Mutex<HashMap<&'static str, Box<dyn Any + Send + Sync>>>,
    /// Calls received.
    pub server_requests: Family<ServerCall, Counter>,
    /// Calls answered, by status.
    pub server_responses: Family<ServerResult, Counter>,
    /// Time from the request to the end of the response.
    pub server_latency: Histograms<ServerCall>,
    /// Calls refused for being over their caller's rate limit, by rule.
    pub server_rate_limited: Family<LimitRule, Counter>,
    /// Attempts sent to an endpoint.
    pub client_requests: Family<ClientCall, Counter>,
    /// Attempts answered (or failed), by status.
    pub client_responses: Family<ClientResult, Counter>,
    /// Time of an attempt, to the end of its response.
    pub client_latency: Histograms<ClientCall>,
    /// Endpoints in the client pool, by state.
    pub client_endpoints: Family<PoolState, Gauge>,
    /// Endpoints ejected for consecutive failures.
    pub client_ejections: Family<Upstream, Counter>,
    /// Connection failures that scheduled a reconnect.
    pub client_reconnects: Family<Upstream, Counter>,
    /// Attempts after the first.
    pub client_retries: Family<UpstreamMethod, Counter>,
    /// Retries the budget refused.
    pub client_budget_refusals: Family<Upstream, Counter>,
    /// Attempts sent to an endpoint in another Availability Zone.
    pub client_cross_zone: Family<Upstream, Counter>,
    /// Seconds since discovery last answered for a service.
    pub discovery_staleness: Family<Upstream, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Discovery backend errors seen for a service.
    pub discovery_errors: Family<Upstream, Counter>,
    /// Seconds until the served certificate expires (negative once it has).
    pub tls_certificate_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The route table's source, as the process follows it.
    pub routes: crate::client::SourceEvents,
    /// The policy file, as the server follows it.
    pub policy: crate::client::SourceEvents,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("weft")),
            hooks: Mutex::new(Vec::new()),
            server_requests: Family::default(),
            server_responses: Family::default(),
            server_latency: Family::new_with_constructor(latency_histogram),
            server_rate_limited: Family::default(),
            client_requests: Family::default(),
            client_responses: Family::default(),
            client_latency: Family::new_with_constructor(latency_histogram),
            client_endpoints: Family::default(),
            client_ejections: Family::default(),
            client_reconnects: Family::default(),
            client_retries: Family::default(),
            client_budget_refusals: Family::default(),
            client_cross_zone: Family::default(),
            discovery_staleness: Family::default(),
            discovery_errors: Family::default(),
            own: Mutex::new(HashMap::new()),
            tls_certificate_expiry: Gauge::default(),
            routes: crate::client::SourceEvents::default(),
            policy: crate::client::SourceEvents::default(),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register(
                "server_requests",
                "gRPC calls received",
                m.server_requests.clone(),
            );
            r.register(
                "server_responses",
                "gRPC calls answered, by status",
                m.server_responses.clone(),
            );
            r.register(
                "server_request_duration_seconds",
                "Time from a call's request to the end of its response",
                m.server_latency.clone(),
            );
            r.register(
                "server_rate_limited",
                "Calls refused for being over their caller's rate limit, by limit rule",
                m.server_rate_limited.clone(),
            );
            r.register(
                "client_cross_zone",
                "Attempts sent to an endpoint in another Availability Zone",
                m.client_cross_zone.clone(),
            );
            register_source(&mut r, "routes", "route tables", &m.routes);
            register_source(&mut r, "policy", "policies", &m.policy);
            r.register(
                "client_requests",
                "Attempts sent to an endpoint",
                m.client_requests.clone(),
            );
            r.register(
                "client_responses",
                "Attempts answered or failed, by status",
                m.client_responses.clone(),
            );
            r.register(
                "client_request_duration_seconds",
                "Time of an attempt to the end of its response",
                m.client_latency.clone(),
            );
            r.register(
                "client_endpoints",
                "Endpoints in the client pool, by state",
                m.client_endpoints.clone(),
            );
            r.register(
                "client_ejections",
                "Endpoints ejected after consecutive failures",
                m.client_ejections.clone(),
            );
            r.register(
                "client_reconnects",
                "Connection failures that scheduled a reconnect",
                m.client_reconnects.clone(),
            );
            r.register(
                "client_retries",
                "Attempts after a call's first",
                m.client_retries.clone(),
            );
            r.register(
                "client_retry_budget_refusals",
                "Retries the retry budget refused",
                m.client_budget_refusals.clone(),
            );
            r.register(
                "discovery_staleness_seconds",
                "Seconds since discovery last answered for a service",
                m.discovery_staleness.clone(),
            );
            r.register(
                "discovery_errors",
                "Discovery backend errors seen for a service",
                m.discovery_errors.clone(),
            );
            r.register(
                "tls_certificate_expiry_seconds",
                "Seconds until the served certificate expires",
                m.tls_certificate_expiry.clone(),
            );
        }
        m
    }

    /// The process's registry, which servers and clients use unless given
    /// another (tests give each mesh its own).
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Self::new())).clone()
    }

    /// A family of the process's own (a service's database pool, say),
    /// registered as `weft_<name>` the first time it is asked for and the
    /// same handle after, so a process that runs several servers on one
    /// registry registers it once. Asked for again as another type, it is a
    /// family of its own that is not rendered (and a warning says so).
    pub fn family<F>(&self, name: &'static str, help: &'static str) -> F
    where
        F: prometheus_client::registry::Metric + Clone + Default,
    {
        let Ok(mut own) = self.own.lock() else {
            return F::default();
        };
        if let Some(known) = own.get(name) {
            return match known.downcast_ref::<F>() {
                Some(family) => family.clone(),
                None => {
                    tracing::warn!(name, "a metric family asked for as another type");
                    F::default()
                }
            };
        }
        let family = F::default();
        if let Ok(mut r) = self.registry.lock() {
            r.register(name, help, family.clone());
        }
        own.insert(name, Box::new(family.clone()));
        family
    }

    /// Runs `hook` before each scrape (to set gauges from their sources);
    /// it is dropped once it returns `false` (its source is gone).
    pub fn on_scrape(&self, hook: impl Fn() -> bool + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.retain(|hook| hook());
        }
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock()
            && let Err(e) = encode(&mut text, &registry)
        {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        text
    }
}

/// Registers a live source's counters (see `SourceEvents`) as
/// `{name}_applied`, `{name}_rejected`, `{name}_fetch_errors` and
/// `{name}_stale`, `what` naming what it holds.
fn register_source(r: &mut Registry, name: &str, what: &str, events: &crate::client::SourceEvents) {
    r.register(
        format!("{name}_applied"),
        format!("Values ({what}) applied from the {name} source"),
        events.applied.clone(),
    );
    r.register(
        format!("{name}_rejected"),
        format!("Values ({what}) refused as malformed; the one in use was kept"),
        events.rejected.clone(),
    );
    r.register(
        format!("{name}_fetch_errors"),
        format!("Reads of the {name} source that failed"),
        events.fetch_errors.clone(),
    );
    r.register(
        format!("{name}_stale"),
        format!("1 while the {name} source holds a value ({what}) that was refused"),
        events.stale.clone(),
    );
}

/// The name of a gRPC status code as the specification spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Splits `/pkg.Service/Method` into its service and method.
pub fn split_path(path: &str) -> (String, String) {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (path.to_owned(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_and_runs_hooks() {
        let m = Metrics::new();
        m.server_requests
            .get_or_create(&ServerCall {
                grpc_service: "s".into(),
                grpc_method: "M".into(),
                peer: "p".into(),
            })
            .inc();
        #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Pool {
            state: String,
        }
        let pool: Family<Pool, Gauge> = m.family("db_pool_connections", "The pool");
        // A clone: the handle `get_or_create` returns holds the family's lock.
        let g = pool
            .get_or_create(&Pool {
                state: "idle".into(),
            })
            .clone();
        m.on_scrape(move || {
            g.set(3);
            false
        });
        // Asked for again: the same family, registered once.
        let again: Family<Pool, Gauge> = m.family("db_pool_connections", "The pool");
        again
            .get_or_create(&Pool {
                state: "max".into(),
            })
            .set(8);
        let text = m.render();
        assert!(
            text.contains(
                r#"weft_server_requests_total{grpc_service="s",grpc_method="M",peer="p"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_db_pool_connections{state="idle"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_db_pool_connections{state="max"} 8"#),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE weft_db_pool_connections").count(), 1);
        assert_eq!(split_path("/a.B/C"), ("a.B".into(), "C".into()));
    }
}
