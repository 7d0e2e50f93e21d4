//! The mesh client: a channel per service name, fed by discovery, with one
//! HTTP/2 connection per endpoint, power-of-two-choices over peak-EWMA load,
//! endpoints out of the pool on connection failure or NOT_SERVING, outlier
//! ejection, and retries only where safe and within a budget. It is a tower
//! service, so generated tonic clients take it like a `Channel`.

pub mod connector;
mod endpoint;
mod front;
mod observe;
mod pool;
mod retry;
mod timeouts;
pub mod tls;

pub use endpoint::{EndpointEvents, EndpointState, FailurePolicy};
pub use front::{MeshClient, MeshClientError};
pub use pool::{Connect, Pool, PoolEvents};
pub use retry::{Idempotency, RetryBudget, never_sent};
pub use timeouts::{MethodTimeouts, TimeoutSettingError, parse_duration};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::codegen::http;
use tower::{Service, ServiceExt};
use tracing::Instrument;
use weft_discovery::Snapshot;

use crate::metrics::{Metrics, Upstream, UpstreamMethod};
use crate::observed_body::status_in;
use observe::{AttemptRecord, CallCache, call_span, report_pool};

/// How a [`MeshChannel`] behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Most attempts per call (the first included).
    pub max_attempts: u32,
    /// HTTP/2 connections per endpoint (one is usually enough; a few help
    /// when one connection's flow control or a single core limits it).
    pub connections_per_endpoint: usize,
    /// How long a call waits for an available endpoint.
    pub pick_timeout: Duration,
    /// When endpoints are ejected.
    pub failure: FailurePolicy,
    /// Retries allowed: this fraction of requests …
    pub retry_percent: f32,
    /// … plus this many per second.
    pub retry_min_per_sec: u32,
    /// Timeouts by method (exact or prefix) for calls that carry no deadline
    /// of their own; see [`MethodTimeouts::parse`] for the setting's form.
    pub method_timeouts: MethodTimeouts,
    /// The timeout for other calls without a deadline; `None` for none.
    pub default_timeout: Option<Duration>,
    /// Where the channel's metrics go.
    pub metrics: Arc<Metrics>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            connections_per_endpoint: 1,
            pick_timeout: Duration::from_secs(5),
            failure: FailurePolicy::default(),
            retry_percent: 0.2,
            retry_min_per_sec: 10,
            method_timeouts: Default::default(),
            default_timeout: None,
            metrics: Metrics::global(),
        }
    }
}

/// A balanced, failure-aware channel to every endpoint of one service.
#[derive(Debug, Clone)]
pub struct MeshChannel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    service: String,
    pool: Arc<Pool>,
    idempotency: Arc<Idempotency>,
    budget: RetryBudget,
    options: ClientOptions,
    follower: JoinHandle<()>,
    calls: Arc<CallCache>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl MeshChannel {
    /// A channel to `service`, following `endpoints` (from a resolver),
    /// connecting with `connect`.
    pub fn new(
        service: impl Into<String>,
        endpoints: watch::Receiver<Snapshot>,
        connect: Connect,
        idempotency: Arc<Idempotency>,
        options: ClientOptions,
    ) -> Self {
        let service = service.into();
        let upstream = Upstream {
            upstream: service.clone(),
        };
        let metrics = &options.metrics;
        // At zero from the start, so a dashboard or alarm reads "none yet"
        // rather than missing data.
        drop(metrics.client_budget_refusals.get_or_create(&upstream));
        let events = PoolEvents {
            endpoint: EndpointEvents {
                ejections: metrics.client_ejections.get_or_create(&upstream).clone(),
                reconnects: metrics.client_reconnects.get_or_create(&upstream).clone(),
            },
            discovery_errors: metrics.discovery_errors.get_or_create(&upstream).clone(),
        };
        let snapshots = endpoints.clone();
        let (pool, follower) = pool::follow(
            endpoints,
            connect,
            options.failure,
            options.connections_per_endpoint,
            events,
        );
        let calls = Arc::new(CallCache::default());
        report_pool(metrics, &service, &pool, snapshots, &calls);
        Self {
            inner: Arc::new(Inner {
                service,
                budget: RetryBudget::new(options.retry_percent, options.retry_min_per_sec),
                pool,
                idempotency,
                options,
                follower,
                calls,
            }),
        }
    }

    /// A channel to `service` over mTLS: every endpoint must prove `expected`.
    pub fn mtls(
        service: impl Into<String>,
        endpoints: watch::Receiver<Snapshot>,
        store: &crate::CertStore,
        expected: crate::SpiffeId,
        idempotency: Arc<Idempotency>,
        options: ClientOptions,
    ) -> Result<Self, rustls::Error> {
        let tls = crate::client_config(store, expected)?;
        let connect: Connect = Arc::new(move |addr| match crate::mtls_channel(addr, tls.clone()) {
            Ok(channel) => Some(channel),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot make a channel");
                None
            }
        });
        Ok(Self::new(service, endpoints, connect, idempotency, options))
    }

    /// A channel to `service` without TLS, for development meshes.
    pub fn plaintext(
        service: impl Into<String>,
        endpoints: watch::Receiver<Snapshot>,
        idempotency: Arc<Idempotency>,
        options: ClientOptions,
    ) -> Self {
        let connect: Connect = Arc::new(|addr| match crate::plaintext_channel(addr) {
            Ok(channel) => Some(channel),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot make a channel");
                None
            }
        });
        Self::new(service, endpoints, connect, idempotency, options)
    }

    /// The endpoints, for operators and tests.
    pub fn endpoints(&self) -> Arc<[Arc<EndpointState>]> {
        self.inner.pool.snapshot()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Responding =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>>;

impl Service<http::Request<tonic::body::Body>> for MeshChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Responding;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per endpoint and settled inside each call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        let span = call_span(&inner.service, request.uri().path());
        crate::trace_context::send_trace(&span, request.headers_mut());
        // The attempts run in the call's span; the one that answers ends it
        // (see `AttemptRecord`).
        Box::pin(async move { inner.send(request).await }.instrument(span))
    }
}

impl Inner {
    /// The call's deadline: the earliest of the incoming call's (propagated),
    /// the caller's own `grpc-timeout`, and the configured method timeout.
    fn deadline(&self, parts: &http::request::Parts) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let own = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout)
            .map(|t| now + t);
        let configured = self
            .options
            .method_timeouts
            .get(parts.uri.path())
            .or(self.options.default_timeout)
            .map(|t| now + t);
        [crate::deadline::current_deadline(), own, configured]
            .into_iter()
            .flatten()
            .min()
    }

    async fn send(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        let (mut parts, body) = request.into_parts();
        let Some(deadline) = self.deadline(&parts) else {
            return self.attempts(parts, body).await;
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(
                Status::deadline_exceeded("deadline exceeded before the call was made").into(),
            );
        }
        // What is left of the deadline travels with the call.
        if let Ok(value) =
            http::HeaderValue::from_str(&crate::deadline::format_grpc_timeout(remaining))
        {
            parts.headers.insert("grpc-timeout", value);
        }
        let expired = || {
            Status::deadline_exceeded(format!("deadline exceeded calling {}", self.service)).into()
        };
        match tokio::time::timeout_at(deadline, self.attempts(parts, body)).await {
            // The server's timer can beat ours by a hair; tonic's server then
            // answers CANCELLED ("Timeout expired"). The deadline is what
            // ended the call, so say so, as gRPC clients do.
            Ok(Ok(response))
                if status_in(response.headers()) == Some(tonic::Code::Cancelled)
                    && tokio::time::Instant::now() + Duration::from_millis(20) >= deadline =>
            {
                Err(expired())
            }
            Ok(result) => result,
            Err(_) => Err(expired()),
        }
    }

    /// Whether the budget allows one more attempt, counted either way.
    fn may_retry(&self, path: &str) -> bool {
        let metrics = &self.options.metrics;
        if self.budget.withdraw() {
            metrics
                .client_retries
                .get_or_create(&UpstreamMethod {
                    upstream: self.service.clone(),
                    grpc_method: path.trim_start_matches('/').to_owned(),
                })
                .inc();
            true
        } else {
            metrics
                .client_budget_refusals
                .get_or_create(&Upstream {
                    upstream: self.service.clone(),
                })
                .inc();
            false
        }
    }

    fn no_endpoint(&self) -> BoxError {
        Status::unavailable(format!("no available endpoint for {}", self.service)).into()
    }

    fn unavailable(&self, error: &BoxError) -> BoxError {
        Box::new(Status::unavailable(format!(
            "{} unavailable: {error}",
            self.service
        )))
    }

    /// Sends `request` to `endpoint` and records the outcome on it: latency
    /// for the estimate, a failure (or a failed connection) for ejection.
    async fn attempt(
        &self,
        endpoint: &EndpointState,
        request: http::Request<tonic::body::Body>,
    ) -> Attempt {
        let in_flight = endpoint.start();
        let record = AttemptRecord::start(
            &self.options.metrics,
            &self.calls,
            &self.service,
            request.uri().path(),
            endpoint.addr,
        );
        let Some(mut channel) = endpoint.channel() else {
            record.failed();
            return Attempt::Failed {
                error: "endpoint has no connection".into(),
                unsent: true,
            };
        };
        let result = match channel.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(response) => {
                in_flight.responded();
                let response = record.answered(response);
                if status_in(response.headers()) == Some(tonic::Code::Unavailable) {
                    endpoint.call_failed();
                    Attempt::Unavailable(response)
                } else {
                    endpoint.call_succeeded();
                    Attempt::Answered(response)
                }
            }
            Err(error) => {
                drop(in_flight);
                record.failed();
                let unsent = never_sent(&error);
                if unsent {
                    endpoint.connection_failed();
                } else {
                    endpoint.call_failed();
                }
                Attempt::Failed {
                    error: Box::new(error),
                    unsent,
                }
            }
        }
    }

    /// With retries off the body streams straight through: nothing is kept
    /// for a replay.
    async fn single_attempt(
        &self,
        parts: http::request::Parts,
        body: tonic::body::Body,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        let endpoint = self
            .pool
            .pick_within(&[], self.options.pick_timeout)
            .await
            .ok_or_else(|| self.no_endpoint())?;
        match self
            .attempt(&endpoint, http::Request::from_parts(parts, body))
            .await
        {
            Attempt::Answered(response) | Attempt::Unavailable(response) => Ok(response),
            Attempt::Failed { error, .. } => Err(self.unavailable(&error)),
        }
    }

    async fn attempts(
        &self,
        parts: http::request::Parts,
        body: tonic::body::Body,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        if self.options.max_attempts <= 1 {
            return self.single_attempt(parts, body).await;
        }
        let safe_method = self.idempotency.is_safe(parts.uri.path());
        // Unary bodies are small: keep them so an attempt can be repeated.
        let body: Bytes = body.collect().await?.to_bytes();
        self.budget.deposit();
        let mut tried: Vec<String> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let endpoint = self
                .pool
                .pick_within(&tried, self.options.pick_timeout)
                .await
                .ok_or_else(|| self.no_endpoint())?;
            let request = http::Request::from_parts(
                parts.clone(),
                tonic::body::Body::new(http_body_util::Full::new(body.clone())),
            );
            let can_retry = attempt < self.options.max_attempts;
            match self.attempt(&endpoint, request).await {
                Attempt::Answered(response) => return Ok(response),
                Attempt::Unavailable(response) => {
                    if safe_method && can_retry && self.may_retry(parts.uri.path()) {
                        // Remembered only when retrying: a call answered at
                        // once allocates nothing for it.
                        tried.push(endpoint.id.clone());
                        continue;
                    }
                    return Ok(response);
                }
                Attempt::Failed { error, unsent } => {
                    if (unsent || safe_method) && can_retry && self.may_retry(parts.uri.path()) {
                        tracing::debug!(service = %self.service, endpoint = %endpoint.id, %error, "retrying elsewhere");
                        tried.push(endpoint.id.clone());
                        continue;
                    }
                    return Err(self.unavailable(&error));
                }
            }
        }
    }
}

/// What one attempt came to.
enum Attempt {
    /// A response other than UNAVAILABLE.
    Answered(http::Response<tonic::body::Body>),
    /// A trailers-only UNAVAILABLE.
    Unavailable(http::Response<tonic::body::Body>),
    /// No response: a transport error, and whether the request never left.
    Failed { error: BoxError, unsent: bool },
}
