//! Dials a mesh endpoint over mTLS for tonic: TCP to the address in the URI,
//! then a TLS handshake that checks the server's SPIFFE identity.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::client_tls::ClientTls;

/// A tonic connector that speaks mTLS with a fixed client configuration.
#[derive(Debug, Clone)]
pub struct MtlsConnector {
    tls: ClientTls,
}

impl MtlsConnector {
    /// Dials with `tls` (from [`crate::client_config`]).
    pub fn new(tls: ClientTls) -> Self {
        Self { tls }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<Gathered>>> + Send>>;

impl tower::Service<Uri> for MtlsConnector {
    type Response = TokioIo<Gathered>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let server_name =
                ServerName::try_from(host.to_owned()).map_err(|_| invalid("bad host"))?;
            let tcp = TcpStream::connect((host, port)).await?;
            handshake(&tls, tcp, server_name).await
        })
    }
}

impl MtlsConnector {
    /// TCP to `addr`, then the TLS handshake, the server named by its
    /// address (its SPIFFE id is what the verifier checks).
    pub(crate) async fn dial(self, addr: SocketAddr) -> io::Result<TokioIo<Gathered>> {
        let tcp = TcpStream::connect(addr).await?;
        handshake(&self.tls, tcp, ServerName::IpAddress(addr.ip().into())).await
    }
}

async fn handshake(
    tls: &ClientTls,
    tcp: TcpStream,
    server_name: ServerName<'static>,
) -> io::Result<TokioIo<Gathered>> {
    tcp.set_nodelay(true)?;
    let stream = TlsConnector::from(tls.config())
        .connect(server_name.clone(), tcp)
        .await?;
    let (_, session) = stream.get_ref();
    tls.check_resumed(session, &server_name).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("resumed session refused: {e}"),
        )
    })?;
    Ok(TokioIo::new(Gathered(stream)))
}

/// A client's TLS stream, saying it takes no vectored writes: hyper's
/// HTTP/2 then gathers a flush's frames into one buffer and hands rustls
/// one write, instead of every frame head and payload as a slice of its
/// own, which costs more CPU per call (see the server's `MeshConn`).
#[derive(Debug)]
pub struct Gathered(TlsStream<TcpStream>);

impl AsyncRead for Gathered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gathered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// A lazily connecting mTLS channel to one address.
pub fn mtls_channel(addr: SocketAddr, tls: ClientTls) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(addr)?.connect_with_connector_lazy(MtlsConnector::new(tls)))
}

/// A lazily connecting plaintext channel to `addr`, with the same timeouts
/// and keepalives: for development meshes run with `WEFT_DEV_PLAINTEXT`.
pub fn plaintext_channel(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(addr)?.tcp_nodelay(true).connect_lazy())
}

/// How long a dial (TCP and the TLS handshake) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on every connection, idle or not, this often…
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// … each answered within this, so a peer that died silently (no FIN, no
/// RST) is noticed in about 15 s.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

fn endpoint(addr: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}
