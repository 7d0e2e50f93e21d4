//! The authorization middleware: reads the caller's identity from the mTLS
//! connection, makes it available to handlers as [`CallerIdentity`], and
//! refuses calls the policy does not allow with `PERMISSION_DENIED` and a
//! message that reveals neither the policy nor the server's internals.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::identity::SpiffeId;
use crate::incoming::PeerInfo;
use crate::policy::{Policy, SharedPolicy};

/// The verified identity of the caller, in each request's extensions
/// (shared with the connection's, not copied per call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity(pub Arc<SpiffeId>);

/// The most denials logged per second; the rest are counted and the count
/// is logged with the next one (a flood of denied calls cannot flood the log).
const DENIALS_LOGGED_PER_SECOND: u32 = 10;
/// The longest path a denial log line carries (paths come from the caller).
const LOGGED_PATH_CHARS: usize = 128;

/// Decides which of a flood of events (denials here, refused connections
/// in [`crate::incoming`]) are logged: at most `per_second` in any second.
#[derive(Debug)]
pub(crate) struct DenialLog {
    per_second: u32,
    /// The current second's start, how many were logged in it, and how many
    /// were left out since the last line.
    state: Mutex<(Instant, u32, u64)>,
}

impl DenialLog {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(left out since the last line)` if this denial is logged.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        let (since, logged, left_out) = &mut *state;
        if now.duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *logged = 0;
        }
        if *logged < self.per_second {
            *logged += 1;
            Some(std::mem::take(left_out))
        } else {
            *left_out += 1;
            None
        }
    }
}

/// At most `max` characters of `path`, marked when cut.
fn cut(path: &str, max: usize) -> String {
    match path.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &path[..at]),
        None => path.to_owned(),
    }
}

/// Applies a policy (or, with none, lets every caller of the server's own
/// trust domain through), and passes the caller's identity along.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: Option<SharedPolicy>,
    trust_domain: Arc<str>,
    denials: Arc<DenialLog>,
}

impl AuthorizeLayer {
    /// Enforces `policy` for a server of `trust_domain`; `None` lets every
    /// authenticated caller of `trust_domain` through (services refuse to
    /// start that way unless told to: see the service configuration).
    pub fn new(policy: Option<Policy>, trust_domain: &str) -> Self {
        Self::shared(policy.map(SharedPolicy::new), trust_domain)
    }

    /// As [`AuthorizeLayer::new`], with a policy shared with other layers
    /// (the rate limits read the same one) and replaced when it changes.
    pub fn shared(policy: Option<SharedPolicy>, trust_domain: &str) -> Self {
        Self {
            policy,
            trust_domain: trust_domain.into(),
            denials: Arc::new(DenialLog::new(DENIALS_LOGGED_PER_SECOND)),
        }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
            trust_domain: self.trust_domain.clone(),
            denials: self.denials.clone(),
        }
    }
}

/// The middleware service; see [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Option<SharedPolicy>,
    trust_domain: Arc<str>,
    denials: Arc<DenialLog>,
}

type Responding<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Responding<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let caller = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.identity.clone());
        let allowed = |id: &crate::SpiffeId| match &self.policy {
            None => id.trust_domain() == &*self.trust_domain,
            Some(policy) => policy
                .load()
                .allows(&self.trust_domain, id, request.uri().path()),
        };
        let verdict = match &caller {
            // Plaintext (development): nobody is authenticated, nothing to apply.
            None if self.policy.is_none() => Ok(()),
            None => Err(Status::unauthenticated("a client certificate is required")),
            Some(id) if allowed(id) => Ok(()),
            Some(id) => {
                if let Some(left_out) = self.denials.admit(Instant::now()) {
                    let method = cut(request.uri().path(), LOGGED_PATH_CHARS);
                    tracing::info!(caller = %id, %method, left_out, "call denied by policy");
                }
                Err(Status::permission_denied(
                    "the caller is not allowed to call this method",
                ))
            }
        };
        if let Err(status) = verdict {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if let Some(id) = caller {
            request.extensions_mut().insert(CallerIdentity(id));
        }
        // The clone that was made ready is the one called (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use rustls::pki_types::CertificateDer;
    use tower::ServiceExt;

    use super::*;

    /// A handler that answers with the caller identity it was given.
    async fn echo_caller(
        request: http::Request<()>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        let caller = request
            .extensions()
            .get::<CallerIdentity>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        Ok(http::Response::builder()
            .header("x-caller", caller)
            .body(tonic::body::Body::empty())
            .unwrap())
    }

    fn request(path: &str, caller: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path).body(()).unwrap();
        if let Some(id) = caller {
            request.extensions_mut().insert(PeerInfo::new(
                None,
                SpiffeId::parse(id).unwrap(),
                CertificateDer::from(vec![]),
            ));
        }
        request
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<String> {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn handlers_see_the_caller_and_the_policy_is_enforced() {
        let policy = Policy::from_toml(
            "[[allow]]\nmethods = [\"pkg.Svc/Read\"]\ncallers = [\"spiffe://td/service/orders\"]",
        )
        .unwrap();
        let service = AuthorizeLayer::new(Some(policy), "td").layer(tower::service_fn(echo_caller));

        let ok = service
            .clone()
            .oneshot(request("/pkg.Svc/Read", Some("spiffe://td/service/orders")))
            .await
            .unwrap();
        assert_eq!(ok.headers()["x-caller"], "spiffe://td/service/orders");
        assert_eq!(grpc_status(&ok), None);

        let denied = service
            .clone()
            .oneshot(request(
                "/pkg.Svc/Write",
                Some("spiffe://td/service/orders"),
            ))
            .await
            .unwrap();
        assert_eq!(
            grpc_status(&denied).as_deref(),
            Some("7"),
            "PERMISSION_DENIED"
        );

        let anonymous = service
            .oneshot(request("/pkg.Svc/Read", None))
            .await
            .unwrap();
        assert_eq!(
            grpc_status(&anonymous).as_deref(),
            Some("16"),
            "UNAUTHENTICATED"
        );

        // Without a policy every authenticated caller of the trust domain
        // passes, identity attached; one of another trust domain does not.
        let open = AuthorizeLayer::new(None, "td").layer(tower::service_fn(echo_caller));
        let ours = open
            .clone()
            .oneshot(request(
                "/pkg.Svc/Write",
                Some("spiffe://td/operator/alice"),
            ))
            .await
            .unwrap();
        assert_eq!(ours.headers()["x-caller"], "spiffe://td/operator/alice");
        let foreign = open
            .oneshot(request(
                "/pkg.Svc/Write",
                Some("spiffe://elsewhere/operator/alice"),
            ))
            .await
            .unwrap();
        assert_eq!(grpc_status(&foreign).as_deref(), Some("7"));
    }
}

#[cfg(test)]
mod denial_log_tests {
    use super::*;

    #[test]
    fn at_most_the_rate_is_logged_and_the_rest_is_counted() {
        let log = DenialLog::new(3);
        let t0 = Instant::now();
        let admitted: Vec<_> = (0..10).map(|_| log.admit(t0)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        // The next second's first line says how many were left out.
        assert_eq!(log.admit(t0 + Duration::from_millis(1000)), Some(7));
        assert_eq!(log.admit(t0 + Duration::from_millis(1001)), Some(0));
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        assert_eq!(cut("/a.B/C", 128), "/a.B/C");
        let long = "é".repeat(300);
        let out = cut(&long, 128);
        assert_eq!(out.chars().count(), 129);
        assert!(out.ends_with('…'));
    }
}
