//! The mesh client: a channel per service name, fed by discovery, with one
//! HTTP/2 connection per endpoint, power-of-two-choices over peak-EWMA load,
//! endpoints out of the pool on connection failure or NOT_SERVING, outlier
//! ejection, slow start, servers' load reports, overloaded answers charged
//! as slow ones, and
//! retries only where safe, within a budget, after a server's push-back and
//! within what the chain of calls has left. It is a tower service, so
//! generated tonic clients take it like a `Channel`.

mod conn;
pub mod connector;
mod endpoint;
mod front;
mod observe;
mod pool;
mod retry;
pub mod route_source;
pub mod routes;
mod timeouts;
pub mod tls;

pub use conn::{Conn, ConnectError};
pub use endpoint::{EndpointEvents, EndpointState, FailurePolicy};
pub use front::{MeshClient, MeshClientError};
pub use pool::{Connect, Locality, Pool, PoolEvents};
pub use retry::{Idempotency, PUSHBACK_HEADER, Pushback, RetryBudget, never_sent, pushback_in};
pub use route_source::{
    FetchError, FileSource, Live, RouteFetch, RoutePolling, Routes, SourceEvents,
};
pub use routes::{MethodPolicy, RouteTable, RoutesError, ServiceRoutes, Subset};
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
use tower::Service;
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
    /// Retries a whole chain of calls may spend on any one path: a call
    /// made while handling an attempt whose path already spent `n` retries
    /// is retried at most `chain_retries - n` times (each attempt carries
    /// its path's count). With the default of 2, a call made directly keeps
    /// its three attempts, and a three-hop chain failing at its end makes
    /// at most 10 attempts there instead of 27.
    pub chain_retries: u32,
    /// The process's route table (see [`routes`]): where calls go, and
    /// each method's timeout and retries, ahead of the settings above.
    pub routes: Routes,
    /// The client's own Availability Zone: calls stay with endpoints that
    /// registered the same `zone` while those hold at least
    /// `zone_min_share` of the available ones, and spill over otherwise
    /// (each call that crosses zones is counted: AWS charges for it).
    /// `None`: no preference.
    pub zone: Option<String>,
    /// See `zone`.
    pub zone_min_share: f64,
}

/// The longest push-back a call waits before retrying; a server asking
/// for more is answered with its own response.
const MAX_PUSHBACK: Duration = Duration::from_secs(10);

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
            chain_retries: 2,
            routes: Routes::default(),
            zone: None,
            zone_min_share: 0.2,
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
    /// Calls that left the client's zone; `None` without a zone.
    cross_zone: Option<prometheus_client::metrics::counter::Counter>,
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
        if let Some(zone) = &options.zone {
            pool.set_locality(Locality {
                zone: zone.clone(),
                min_share: options.zone_min_share,
            });
            drop(metrics.client_cross_zone.get_or_create(&upstream));
        }
        let cross_zone = options
            .zone
            .as_ref()
            .map(|_| metrics.client_cross_zone.get_or_create(&upstream).clone());
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
                cross_zone,
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
        let connect: Connect = Arc::new(move |addr| match Conn::mtls(addr, tls.clone()) {
            Ok(conn) => Some(conn),
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
        let connect: Connect = Arc::new(|addr| match Conn::plaintext(addr) {
            Ok(conn) => Some(conn),
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
    fn deadline(
        &self,
        parts: &http::request::Parts,
        route_timeout: Option<Duration>,
    ) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let own = parts
            .headers
            .get(crate::deadline::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout)
            .map(|t| now + t);
        let configured = route_timeout
            .or_else(|| self.options.method_timeouts.get(parts.uri.path()))
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
        // The route is read once, as the call starts: a table that changes
        // later does not change a call in flight.
        let routes = self.options.routes.service(&self.service);
        let (placement, policy) = match &routes {
            Some(r) => (
                r.placement(&parts.headers, fastrand::f64()),
                r.policy_for(parts.uri.path()),
            ),
            None => (None, MethodPolicy::default()),
        };
        let route = Route {
            subset: placement.map(|p| p.subset),
            strict: placement.is_some_and(|p| p.strict),
            policy: &policy,
        };
        let Some(deadline) = self.deadline(&parts, policy.timeout) else {
            return self.attempts(parts, body, None, route).await;
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
            parts.headers.insert(crate::deadline::GRPC_TIMEOUT, value);
        }
        let expired = || {
            Status::deadline_exceeded(format!("deadline exceeded calling {}", self.service)).into()
        };
        match tokio::time::timeout_at(deadline, self.attempts(parts, body, Some(deadline), route))
            .await
        {
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

    fn no_endpoint(&self, subset: Option<&Subset>) -> BoxError {
        match subset {
            Some(s) => Status::unavailable(format!(
                "no available endpoint for {} with {s}",
                self.service
            ))
            .into(),
            None => {
                Status::unavailable(format!("no available endpoint for {}", self.service)).into()
            }
        }
    }

    /// An endpoint for an attempt: one of the route's subset, waiting for
    /// one up to the pick timeout.
    async fn pick(
        &self,
        tried: &[String],
        route: Route<'_>,
    ) -> Result<Arc<EndpointState>, BoxError> {
        let mut subset = route.subset;
        // A split's subset with none available gives way to any endpoint;
        // a header match's does not.
        if !route.strict && subset.is_some() {
            if let Some(e) = self.pool.pick_in(tried, subset) {
                return Ok(e);
            }
            subset = None;
        }
        self.pool
            .pick_within_in(tried, subset, self.options.pick_timeout)
            .await
            .ok_or_else(|| self.no_endpoint(subset))
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
        if let (Some(crossed), Some(own)) = (&self.cross_zone, &self.options.zone)
            && endpoint.zone().is_some_and(|z| z != own)
        {
            crossed.inc();
        }
        let record = AttemptRecord::start(
            &self.options.metrics,
            &self.calls,
            &self.service,
            request.uri().path(),
            endpoint.addr,
        );
        let Some(conn) = endpoint.channel() else {
            record.failed();
            return Attempt::Failed {
                error: "endpoint has no connection".into(),
                unsent: true,
            };
        };
        let result = conn.request(request).await;
        match result {
            Ok(response) => {
                let status = status_in(response.headers());
                let pushback = pushback_in(response.headers());
                if let Some(utilization) = crate::load_report::load_in(response.headers()) {
                    endpoint.load_reported(utilization);
                }
                // An answer that means "overloaded" costs the balancer's
                // penalty however fast it came: a throttled endpoint must
                // draw fewer calls, not more.
                let overloaded = status == Some(tonic::Code::ResourceExhausted)
                    || (status == Some(tonic::Code::Unavailable) && pushback.is_some());
                if overloaded {
                    in_flight.overloaded();
                } else {
                    in_flight.responded();
                }
                let response = record.answered(response);
                match status {
                    Some(code @ tonic::Code::Unavailable) => {
                        endpoint.call_failed();
                        Attempt::Refused {
                            response,
                            code,
                            pushback,
                        }
                    }
                    // Busy, not broken: no step toward ejection.
                    Some(code @ tonic::Code::ResourceExhausted) => Attempt::Refused {
                        response,
                        code,
                        pushback,
                    },
                    _ => {
                        endpoint.call_succeeded();
                        Attempt::Answered(response, status)
                    }
                }
            }
            Err(error) => {
                drop(in_flight);
                record.failed();
                let unsent = never_sent(error.as_ref());
                if unsent {
                    endpoint.connection_failed();
                } else {
                    endpoint.call_failed();
                }
                Attempt::Failed { error, unsent }
            }
        }
    }

    /// With retries off the body streams straight through: nothing is kept
    /// for a replay.
    async fn single_attempt(
        &self,
        mut parts: http::request::Parts,
        body: tonic::body::Body,
        spent: u32,
        route: Route<'_>,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        mark_attempt(&mut parts.headers, spent, 0);
        let endpoint = self.pick(&[], route).await?;
        match self
            .attempt(&endpoint, http::Request::from_parts(parts, body))
            .await
        {
            Attempt::Answered(response, _) | Attempt::Refused { response, .. } => Ok(response),
            Attempt::Failed { error, .. } => Err(self.unavailable(&error)),
        }
    }

    async fn attempts(
        &self,
        mut parts: http::request::Parts,
        body: tonic::body::Body,
        deadline: Option<tokio::time::Instant>,
        route: Route<'_>,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        // The retries the chain has left on this path bound this call's.
        let spent = crate::retries::current_retries_spent();
        let max_attempts = route
            .policy
            .attempts
            .unwrap_or(self.options.max_attempts)
            .min(
                self.options
                    .chain_retries
                    .saturating_sub(spent)
                    .saturating_add(1),
            );
        if max_attempts <= 1 {
            return self.single_attempt(parts, body, spent, route).await;
        }
        let retry_on = route.policy.retry_on.as_deref();
        let safe_method = self.idempotency.is_safe(parts.uri.path());
        // Unary bodies are small: keep them so an attempt can be repeated.
        let body: Bytes = body.collect().await?.to_bytes();
        self.budget.deposit();
        let mut tried: Vec<String> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let endpoint = self.pick(&tried, route).await?;
            mark_attempt(&mut parts.headers, spent, attempt - 1);
            let request = http::Request::from_parts(
                parts.clone(),
                tonic::body::Body::new(http_body_util::Full::new(body.clone())),
            );
            let can_retry = attempt < max_attempts;
            match self.attempt(&endpoint, request).await {
                // A route may make other codes retryable for this method.
                Attempt::Answered(response, code)
                    if !(safe_method
                        && can_retry
                        && retry_on
                            .is_some_and(|codes| code.is_some_and(|c| codes.contains(&c)))
                        && self.may_retry(parts.uri.path())) =>
                {
                    return Ok(response);
                }
                Attempt::Answered(..) => {
                    tried.push(endpoint.id.clone());
                    continue;
                }
                Attempt::Refused {
                    response,
                    code,
                    pushback,
                } => {
                    // By default UNAVAILABLE is retried, and
                    // RESOURCE_EXHAUSTED when the server says when; a route
                    // may name the codes instead.
                    let retryable = match retry_on {
                        Some(codes) => codes.contains(&code),
                        None => code == tonic::Code::Unavailable || pushback.is_some(),
                    };
                    if !retryable {
                        return Ok(response);
                    }
                    let wait = match pushback {
                        None => Duration::ZERO,
                        Some(Pushback::After(wait)) => wait,
                        Some(Pushback::Never) => return Ok(response),
                    };
                    // A push-back the deadline cannot wait out ends the
                    // call with the server's own answer.
                    let fits = wait <= MAX_PUSHBACK
                        && deadline.is_none_or(|d| tokio::time::Instant::now() + wait < d);
                    if safe_method && can_retry && fits && self.may_retry(parts.uri.path()) {
                        // Remembered only when retrying: a call answered at
                        // once allocates nothing for it.
                        tried.push(endpoint.id.clone());
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
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

/// Where a call goes and how it is retried, from the route table.
#[derive(Clone, Copy)]
struct Route<'a> {
    /// The endpoints it may go to; all of them for `None`.
    subset: Option<&'a Subset>,
    /// Whether only those (see [`routes::Placement`]).
    strict: bool,
    /// Its timeout and retries, where the route sets them.
    policy: &'a MethodPolicy,
}

/// Tells the server which attempt this is and how many retries its path
/// has spent (the chain's, and this call's `retry` so far), so that what it
/// calls in turn retries only within what is left.
fn mark_attempt(headers: &mut http::HeaderMap, spent: u32, retry: u32) {
    use crate::retries::{PREVIOUS_ATTEMPTS_HEADER, RETRIES_HEADER};
    for (key, n) in [
        (RETRIES_HEADER, spent.saturating_add(retry)),
        (PREVIOUS_ATTEMPTS_HEADER, retry),
    ] {
        if n == 0 {
            headers.remove(key);
        } else {
            headers.insert(key, http::HeaderValue::from(n));
        }
    }
}

/// What one attempt came to.
enum Attempt {
    /// A response other than UNAVAILABLE or RESOURCE_EXHAUSTED, with its
    /// status when it is trailers-only.
    Answered(http::Response<tonic::body::Body>, Option<tonic::Code>),
    /// A trailers-only UNAVAILABLE or RESOURCE_EXHAUSTED, with the server's
    /// push-back if it gave one.
    Refused {
        response: http::Response<tonic::body::Body>,
        code: tonic::Code,
        pushback: Option<Pushback>,
    },
    /// No response: a transport error, and whether the request never left.
    Failed { error: BoxError, unsent: bool },
}
