//! What the mesh client reports: a span per call (sending its trace context
//! in `traceparent`), per-attempt metrics by endpoint, and, at each scrape,
//! the pool's endpoints by state and how stale discovery is.

use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::watch;
use tonic::Code;
use weft_discovery::Snapshot;

use super::pool::Pool;
use crate::metrics::{ClientCall, ClientResult, Metrics, PoolState, Upstream, code_name};
use crate::observed_body::{Observed, status_in};

/// Sets the pool gauges and discovery staleness of `upstream` at each
/// scrape, for as long as its pool lives.
pub(super) fn report_pool(
    metrics: &Arc<Metrics>,
    upstream: &str,
    pool: &Arc<Pool>,
    snapshots: watch::Receiver<Snapshot>,
) {
    let weak: Weak<Pool> = Arc::downgrade(pool);
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

/// Ends `span` with the call's status once the response body ends.
pub(super) fn finish_span(
    span: tracing::Span,
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (parts, body) = response.into_parts();
    let header_code = status_in(&parts.headers);
    let on_end = Box::new(move |code: Code| {
        span.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
    });
    let body = tonic::body::Body::new(Observed::new(body, header_code, on_end));
    http::Response::from_parts(parts, body)
}

/// One attempt at an endpoint, counted when it starts and when it ends.
pub(super) struct AttemptRecord {
    metrics: Arc<Metrics>,
    call: ClientCall,
    started: Instant,
}

impl AttemptRecord {
    /// Counts an attempt of `path` to `peer` of `upstream`.
    pub(super) fn start(metrics: &Arc<Metrics>, upstream: &str, path: &str, peer: String) -> Self {
        let call = ClientCall {
            upstream: upstream.to_owned(),
            grpc_method: path.trim_start_matches('/').to_owned(),
            peer,
        };
        metrics.client_requests.get_or_create(&call).inc();
        Self {
            metrics: metrics.clone(),
            call,
            started: Instant::now(),
        }
    }

    /// The attempt failed without a response.
    pub(super) fn failed(self) {
        self.end(Code::Unavailable);
    }

    /// The attempt was answered: it ends with the response body.
    pub(super) fn answered(
        self,
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let (parts, body) = response.into_parts();
        let header_code = status_in(&parts.headers);
        let on_end = Box::new(move |code| self.end(code));
        let body = tonic::body::Body::new(Observed::new(body, header_code, on_end));
        http::Response::from_parts(parts, body)
    }

    fn end(self, code: Code) {
        self.metrics
            .client_latency
            .get_or_create(&self.call)
            .observe(self.started.elapsed().as_secs_f64());
        let ClientCall {
            upstream,
            grpc_method,
            peer,
        } = self.call;
        self.metrics
            .client_responses
            .get_or_create(&ClientResult {
                upstream,
                grpc_method,
                peer,
                grpc_code: code_name(code).to_owned(),
            })
            .inc();
    }
}
