//! One HTTP/2 connection to an endpoint, shared by every call to it.
//!
//! Calls go straight to hyper's `SendRequest`: tonic's `Channel` puts a
//! buffer and a worker task between each call and the connection, a hop
//! per call the mesh client does not need, since it already decides per
//! call where to send it. A connection that closed (a GOAWAY, a reset, a
//! failed keepalive) is made again by the next call that needs it, one dial
//! at a time.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::body::Body;

use super::connector::{CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MtlsConnector};
use crate::client_tls::ClientTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Dialing<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// What calls say they come from, as gRPC clients do.
const USER_AGENT: http::HeaderValue =
    http::HeaderValue::from_static(concat!("weft/", env!("CARGO_PKG_VERSION")));

/// How a connection's transport is made.
#[derive(Clone)]
enum Dial {
    Tls(MtlsConnector),
    Plain,
}

/// A failed dial: the request was never written, so it may go elsewhere
/// whatever its method (see [`super::retry::never_sent`], which knows it by
/// this type's name).
#[derive(Debug)]
pub struct ConnectError(BoxError);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting: {}", self.0)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// A lazily dialled HTTP/2 connection to one address, cheap to clone; a
/// tower service for tonic clients.
#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    /// `http://<addr>`: HTTP/2 requests carry a scheme and an authority.
    origin: http::uri::Authority,
    dial: Dial,
    /// The live connection's sender; `None` before the first dial.
    current: ArcSwapOption<SendRequest<Body>>,
    /// Held while dialling, so calls that find no connection make one, not
    /// one each.
    dialling: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Conn {
    /// A connection to `addr` over mTLS with `tls`, dialled when first used.
    pub fn mtls(addr: SocketAddr, tls: ClientTls) -> Result<Self, BoxError> {
        Self::new(addr, Dial::Tls(MtlsConnector::new(tls)))
    }

    /// A plaintext connection to `addr` (development meshes), dialled when
    /// first used.
    pub fn plaintext(addr: SocketAddr) -> Result<Self, BoxError> {
        Self::new(addr, Dial::Plain)
    }

    fn new(addr: SocketAddr, dial: Dial) -> Result<Self, BoxError> {
        Ok(Self {
            inner: Arc::new(Inner {
                addr,
                origin: addr.to_string().parse()?,
                dial,
                current: ArcSwapOption::empty(),
                dialling: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Sends `request` on the live connection, dialling one if there is
    /// none; a request the closing connection gave back unsent goes once
    /// more, on a new one.
    pub(crate) async fn request(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        Self::send(self.inner.clone(), request).await
    }

    async fn send(
        inner: Arc<Inner>,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(inner.origin.clone());
        *request.uri_mut() = http::Uri::from_parts(uri)?;
        request
            .headers_mut()
            .entry(http::header::USER_AGENT)
            .or_insert(USER_AGENT);
        let mut sender = inner.sender().await?;
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(Body::new)),
            Err(mut error) => {
                let Some(request) = error.take_message() else {
                    return Err(error.into_error().into());
                };
                // It never left: the connection had closed (and is no
                // longer live), so this takes a new one.
                let mut sender = inner.sender().await?;
                Ok(sender.send_request(request).await?.map(Body::new))
            }
        }
    }
}

impl Inner {
    fn live(&self) -> Option<SendRequest<Body>> {
        self.current
            .load()
            .as_deref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let _dialling = self.dialling.lock().await;
        // Another call may have dialled while this one waited.
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| ConnectError("timed out".into()))?
            .map_err(ConnectError)?;
        self.current.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let addr = self.addr;
        match &self.dial {
            Dial::Tls(connector) => {
                let io = connector.clone().dial(addr).await?;
                handshake(&builder, io, addr).await
            }
            Dial::Plain => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                handshake(&builder, TokioIo::new(tcp), addr).await
            }
        }
    }
}

/// The HTTP/2 handshake on `io`, its connection driven by a task of its own
/// until it closes.
async fn handshake<T>(
    builder: &Builder<TokioExecutor>,
    io: T,
    addr: SocketAddr,
) -> Result<SendRequest<Body>, BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = builder.handshake(io).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "connection ended");
        }
    });
    Ok(sender)
}

impl tower::Service<http::Request<Body>> for Conn {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Dialing<http::Response<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HTTP/2 takes any number of calls; one waits inside h2 for a
        // stream when the server's limit is reached.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(Self::send(self.inner.clone(), request))
    }
}
