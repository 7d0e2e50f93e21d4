//! The authorization middleware: reads the caller's identity from the mTLS
//! connection, makes it available to handlers as [`CallerIdentity`], and
//! refuses calls the policy does not allow with `PERMISSION_DENIED` and a
//! message that reveals neither the policy nor the server's internals.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::identity::SpiffeId;
use crate::incoming::PeerInfo;
use crate::policy::Policy;

/// The verified identity of the caller, in each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity(pub SpiffeId);

/// Applies a policy (or, with none, only passes the identity along).
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: Option<Arc<Policy>>,
}

impl AuthorizeLayer {
    /// Enforces `policy`; `None` lets every authenticated caller through.
    pub fn new(policy: Option<Policy>) -> Self {
        Self {
            policy: policy.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The middleware service; see [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
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
        let verdict = match (&self.policy, &caller) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(Status::unauthenticated("a client certificate is required")),
            (Some(policy), Some(id)) if policy.allows(id, request.uri().path()) => Ok(()),
            (Some(_), Some(id)) => {
                tracing::info!(caller = %id, method = %request.uri().path(), "call denied by policy");
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
            request.extensions_mut().insert(PeerInfo {
                remote_addr: None,
                identity: SpiffeId::parse(id).unwrap(),
                leaf: CertificateDer::from(vec![]),
            });
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
        let service = AuthorizeLayer::new(Some(policy)).layer(tower::service_fn(echo_caller));

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

        // Without a policy every authenticated caller passes, identity attached.
        let open = AuthorizeLayer::new(None)
            .layer(tower::service_fn(echo_caller))
            .oneshot(request(
                "/pkg.Svc/Write",
                Some("spiffe://td/operator/alice"),
            ))
            .await
            .unwrap();
        assert_eq!(open.headers()["x-caller"], "spiffe://td/operator/alice");
    }
}
