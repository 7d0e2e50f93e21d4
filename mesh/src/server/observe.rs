//! The server side's observation middleware: a span per call (continuing
//! the caller's W3C trace), and the golden metrics per service, method and
//! caller identity (requests, responses by gRPC status, latency to the end
//! of the response). It sits outside authorization, so refused calls are
//! seen too: label sets and span names come only from the methods the
//! server serves, and every other path is `unknown`, so no caller can grow
//! them (or a trace name) without bound.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

use crate::incoming::PeerInfo;
use crate::metrics::{Metrics, ServerCall, ServerResult, code_name, split_path};
use crate::observed_body::observe_response;
use crate::trace_context::{continue_trace, record_status};

/// What a path that is not a served method is labelled as.
pub const UNKNOWN: &str = "unknown";

/// Observes every call to the services inside it.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    /// The paths (`/package.Service/Method`) labelled as themselves.
    served: Arc<HashSet<String>>,
}

impl ObserveLayer {
    /// Records into `metrics`, labelling calls to `served` paths
    /// (`/package.Service/Method`, see [`served_paths`]) by service and
    /// method and every other call `unknown`.
    pub fn new(metrics: Arc<Metrics>, served: HashSet<String>) -> Self {
        Self {
            metrics,
            served: Arc::new(served),
        }
    }
}

/// The paths of every method of `services` (full names, such as
/// `weft.inventory.v1.InventoryService`) described in `descriptor_sets`
/// (encoded `FileDescriptorSet`s); a set that does not decode adds nothing.
pub fn served_paths(descriptor_sets: &[&[u8]], services: &[&str]) -> HashSet<String> {
    use prost::Message;
    let mut out = HashSet::new();
    for set in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                if services.contains(&full.as_str()) {
                    out.extend(
                        service
                            .method
                            .iter()
                            .map(|m| format!("/{full}/{}", m.name())),
                    );
                }
            }
        }
    }
    out
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            served: self.served.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    served: Arc<HashSet<String>>,
}

impl<S, B> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path();
        let (name, (grpc_service, grpc_method)) = if self.served.contains(path) {
            (path.trim_start_matches('/'), split_path(path))
        } else {
            (UNKNOWN, (UNKNOWN.to_owned(), UNKNOWN.to_owned()))
        };
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.identity.to_string())
            .unwrap_or_else(|| "unauthenticated".to_owned());
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %grpc_service,
            rpc.method = %grpc_method,
            peer = %peer,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        continue_trace(&span, request.headers());
        let call = ServerCall {
            grpc_service,
            grpc_method,
            peer,
        };
        self.metrics.server_requests.get_or_create(&call).inc();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            let response = future.await?;
            Ok(observe_response(response, move |code: tonic::Code| {
                let elapsed = started.elapsed();
                span.in_scope(|| {
                    tracing::debug!(
                        grpc_code = code_name(code),
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        "call finished"
                    );
                });
                record_status(&span, code);
                metrics
                    .server_latency
                    .get_or_create(&call)
                    .observe(elapsed.as_secs_f64());
                let ServerCall {
                    grpc_service,
                    grpc_method,
                    peer,
                } = call;
                metrics
                    .server_responses
                    .get_or_create(&ServerResult {
                        grpc_service,
                        grpc_method,
                        peer,
                        grpc_code: code_name(code).to_owned(),
                    })
                    .inc();
                drop(span);
            }))
        })
    }
}
