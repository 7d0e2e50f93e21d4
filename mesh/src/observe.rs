//! The server side's observation middleware: a span per call (continuing
//! the caller's W3C trace), and the golden metrics per service, method and
//! caller identity (requests, responses by gRPC status, latency to the end
//! of the response). It sits outside authorization, so refused calls are
//! seen too.

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

/// Observes every call to the services inside it.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
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
        let (grpc_service, grpc_method) = split_path(request.uri().path());
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.identity.to_string())
            .unwrap_or_else(|| "unauthenticated".to_owned());
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %request.uri().path().trim_start_matches('/'),
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
