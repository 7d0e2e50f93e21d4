//! What the mesh client reports: a span per call (sending its trace context
//! in `traceparent`), per-attempt metrics by endpoint, and, at each scrape,
//! the pool's endpoints by state and how stale discovery is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use tokio::sync::watch;
use tonic::Code;
use weft_discovery::Snapshot;

use super::pool::Pool;
use crate::metrics::{ClientCall, ClientResult, Metrics, PoolState, Upstream, code_name};
use crate::observed_body::observe_response;
use crate::trace_context::record_status;

/// Sets the pool gauges and discovery staleness of `upstream` at each
/// scrape, for as long as its pool lives.
pub(super) fn report_pool(
    metrics: &Arc<Metrics>,
    upstream: &str,
    pool: &Arc<Pool>,
    snapshots: watch::Receiver<Snapshot>,
    calls: &Arc<CallCache>,
) {
    let weak: Weak<Pool> = Arc::downgrade(pool);
    let calls: Weak<CallCache> = Arc::downgrade(calls);
    let registry = Arc::downgrade(metrics);
    let label = |state: &str| PoolState {
        upstream: upstream.to_owned(),
        state: state.to_owned(),
    };
    let available = metrics
        .client_endpoints
        .get_or_create(&label("available"))
        .clone();
    let unavailable = metrics
        .client_endpoints
        .get_or_create(&label("unavailable"))
        .clone();
    let staleness = metrics
        .discovery_staleness
        .get_or_create(&Upstream {
            upstream: upstream.to_owned(),
        })
        .clone();
    metrics.on_scrape(move || {
        let Some(pool) = weak.upgrade() else {
            // The channel is gone: its series stop meaning anything.
            available.set(0);
            unavailable.set(0);
            return false;
        };
        let all = pool.snapshot();
        let up = all.iter().filter(|e| e.available()).count();
        available.set(i64::try_from(up).unwrap_or(i64::MAX));
        unavailable.set(i64::try_from(all.len() - up).unwrap_or(i64::MAX));
        let stale = snapshots.borrow().staleness();
        staleness.set(stale.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        if let (Some(calls), Some(metrics)) = (calls.upgrade(), registry.upgrade()) {
            let present = all.iter().map(|e| e.addr).collect();
            calls.keep_only(&metrics, &present);
        }
        true
    });
}

/// The span of one call through the mesh client.
pub(super) fn call_span(upstream: &str, path: &str) -> tracing::Span {
    tracing::info_span!(
        "grpc.client",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.method = %path.trim_start_matches('/'),
        upstream = %upstream,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The metric handles of one method at one endpoint, looked up once: the
/// hot path then only bumps atomics instead of building label sets.
struct CallMetrics {
    call: ClientCall,
    requests: Counter,
    latency: Histogram,
    ok: Counter,
}

/// Handles by endpoint and method, per channel.
#[derive(Default)]
pub(super) struct CallCache(RwLock<HashMap<SocketAddr, HashMap<String, Arc<CallMetrics>>>>);

/// Every status code, for removing an endpoint's answers by code.
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl CallCache {
    /// Forgets the endpoints not in `present`, and their series: endpoints
    /// come and go with every deployment, and a long-lived client must not
    /// keep a label set for each one it ever called.
    pub(super) fn keep_only(
        &self,
        metrics: &Metrics,
        present: &std::collections::HashSet<SocketAddr>,
    ) {
        let Ok(mut cache) = self.0.write() else {
            return;
        };
        let gone: Vec<SocketAddr> = cache
            .keys()
            .filter(|a| !present.contains(a))
            .copied()
            .collect();
        for addr in gone {
            let Some(methods) = cache.remove(&addr) else {
                continue;
            };
            for entry in methods.values() {
                metrics.client_requests.remove(&entry.call);
                metrics.client_latency.remove(&entry.call);
                for code in CODES {
                    metrics.client_responses.remove(&ClientResult {
                        upstream: entry.call.upstream.clone(),
                        grpc_method: entry.call.grpc_method.clone(),
                        peer: entry.call.peer.clone(),
                        grpc_code: code_name(code).to_owned(),
                    });
                }
            }
        }
    }
}

impl std::fmt::Debug for CallCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallCache")
    }
}

impl CallCache {
    fn get(
        &self,
        metrics: &Metrics,
        upstream: &str,
        path: &str,
        peer: SocketAddr,
    ) -> Arc<CallMetrics> {
        let method = path.trim_start_matches('/');
        if let Ok(cache) = self.0.read()
            && let Some(found) = cache.get(&peer).and_then(|m| m.get(method))
        {
            return found.clone();
        }
        let call = ClientCall {
            upstream: upstream.to_owned(),
            grpc_method: method.to_owned(),
            peer: peer.to_string(),
        };
        let ok = ClientResult {
            upstream: call.upstream.clone(),
            grpc_method: call.grpc_method.clone(),
            peer: call.peer.clone(),
            grpc_code: code_name(Code::Ok).to_owned(),
        };
        let entry = Arc::new(CallMetrics {
            requests: metrics.client_requests.get_or_create(&call).clone(),
            latency: metrics.client_latency.get_or_create(&call).clone(),
            ok: metrics.client_responses.get_or_create(&ok).clone(),
            call,
        });
        if let Ok(mut cache) = self.0.write() {
            cache
                .entry(peer)
                .or_default()
                .insert(method.to_owned(), entry.clone());
        }
        entry
    }
}

/// One attempt at an endpoint, counted when it starts and when it ends.
pub(super) struct AttemptRecord {
    metrics: Arc<Metrics>,
    handles: Arc<CallMetrics>,
    started: Instant,
    /// The call's span (the one the attempt runs in): the attempt that
    /// answers ends it with its status, in the same body wrapper that ends
    /// the attempt's metrics, so a response is wrapped once, not twice.
    call: tracing::Span,
}

impl AttemptRecord {
    /// Counts an attempt of `path` to `peer` of `upstream`.
    pub(super) fn start(
        metrics: &Arc<Metrics>,
        cache: &CallCache,
        upstream: &str,
        path: &str,
        peer: SocketAddr,
    ) -> Self {
        let handles = cache.get(metrics, upstream, path, peer);
        handles.requests.inc();
        Self {
            metrics: metrics.clone(),
            handles,
            started: Instant::now(),
            call: tracing::Span::current(),
        }
    }

    /// The attempt failed without a response.
    pub(super) fn failed(self) {
        self.end(Code::Unavailable);
    }

    /// The attempt was answered: it, and the call's span, end with the
    /// response body.
    pub(super) fn answered(
        self,
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        observe_response(response, move |code| {
            record_status(&self.call, code);
            self.end(code);
        })
    }

    fn end(self, code: Code) {
        let h = &self.handles;
        h.latency.observe(self.started.elapsed().as_secs_f64());
        if code == Code::Ok {
            h.ok.inc();
            return;
        }
        self.metrics
            .client_responses
            .get_or_create(&ClientResult {
                upstream: h.call.upstream.clone(),
                grpc_method: h.call.grpc_method.clone(),
                peer: h.call.peer.clone(),
                grpc_code: code_name(code).to_owned(),
            })
            .inc();
    }
}
