//! Accepts TCP connections, completes the mTLS handshake off the accept loop
//! (a slow or hostile peer cannot hold up others), and hands tonic streams
//! that carry the peer's verified identity as connect info. Handshakes are
//! bounded in time and in number (a new one past the cap takes the place of
//! the oldest, so stalled connections cannot lock real callers out), and
//! connections in number ([`ServerLimits`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::authorize::DenialLog;
use crate::certs::CertStore;
use crate::identity::SpiffeId;
use crate::limits::ServerLimits;
use crate::server_tls::client_verifier;

/// Who is on the other end of a connection, as verified by mTLS. tonic puts
/// a clone in every request's extensions, so what it holds is shared, not
/// copied per call.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The identity in the peer's certificate.
    pub identity: Arc<SpiffeId>,
    /// The identity as text (`spiffe://…`), made once per connection for
    /// metric labels and log lines.
    pub label: Arc<str>,
    /// The peer's leaf certificate.
    pub leaf: Arc<CertificateDer<'static>>,
}

impl PeerInfo {
    /// The peer `identity` with certificate `leaf`, at `remote_addr`.
    pub fn new(
        remote_addr: Option<SocketAddr>,
        identity: SpiffeId,
        leaf: CertificateDer<'static>,
    ) -> Self {
        Self {
            remote_addr,
            label: Arc::from(identity.to_string()),
            identity: Arc::new(identity),
            leaf: Arc::new(leaf),
        }
    }
}

/// An accepted, authenticated connection.
#[derive(Debug)]
pub struct MeshConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    /// This connection's place under the connection cap, given back when
    /// the server drops it.
    _slot: OwnedSemaphorePermit,
    /// When the connection ends however busy it is: its maximum age (when
    /// the server sent GOAWAY) plus the grace. Reads fail from then on (the
    /// server always has one pending, so the timer is watched there only,
    /// not on every write), and the server drops the connection.
    closes: Pin<Box<tokio::time::Sleep>>,
}

impl MeshConn {
    /// An error once the connection's lifetime is over (registering the
    /// wake-up for it otherwise).
    fn past_lifetime(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.closes.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived its maximum age and grace",
            )
        })
    }
}

impl Connected for MeshConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for MeshConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.past_lifetime(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    /// No: hyper's HTTP/2 then gathers a flush's frames into one buffer
    /// and hands rustls one write. Told that the stream takes vectored
    /// writes (tokio-rustls says it does), it hands rustls every frame head
    /// and payload as a slice of its own; in the server bench that cost a
    /// call about a third more of the server's CPU at 256 calls in flight.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The stream of authenticated connections on `listener`, for
/// `serve_with_incoming`, within `limits`. Accepting stops when the stream
/// is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    store: &CertStore,
    limits: &ServerLimits,
) -> ReceiverStream<Result<MeshConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(config),
        Arc::new(Reverify {
            verifier: client_verifier(store),
            store: store.clone(),
            verified: Mutex::new(HashMap::new()),
        }),
        tx,
        limits.clone(),
    ));
    ReceiverStream::new(rx)
}

/// The handshakes in progress, oldest first, so the oldest can be ended to
/// make room.
#[derive(Debug, Default)]
struct Handshakes {
    next: u64,
    running: BTreeMap<u64, AbortHandle>,
}

/// Checks the chain a resumed session restored, as a full handshake's is
/// checked; a chain already verified against the current bundle (same
/// generation) and still within its validity is not verified again, so a
/// client that reconnects often costs one check per bundle change.
struct Reverify {
    verifier: Arc<dyn ClientCertVerifier>,
    store: CertStore,
    /// Leaf certificate → (bundle generation, the leaf's notAfter). At most
    /// [`REVERIFIED_KEPT`] entries; cleared when full.
    verified: Mutex<HashMap<CertificateDer<'static>, (u64, std::time::SystemTime)>>,
}

/// Verified chains remembered at most.
const REVERIFIED_KEPT: usize = 1024;

impl Reverify {
    fn check(
        &self,
        leaf: &CertificateDer<'static>,
        intermediates: &[CertificateDer<'static>],
    ) -> Result<(), String> {
        let generation = self.store.current().generation;
        let now = std::time::SystemTime::now();
        if let Ok(verified) = self.verified.lock()
            && let Some((g, not_after)) = verified.get(leaf)
            && *g == generation
            && now < *not_after
        {
            return Ok(());
        }
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| e.to_string())?;
        let (_, not_after) = crate::certs::validity(leaf)?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= REVERIFIED_KEPT {
                verified.clear();
            }
            verified.insert(leaf.clone(), (generation, not_after));
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    verifier: Arc<Reverify>,
    tx: mpsc::Sender<Result<MeshConn, io::Error>>,
    limits: ServerLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Mutex::new(Handshakes::default()));
    // At most one line a second for each, with how many it stands for.
    let full = DenialLog::new(1);
    let evicted = DenialLog::new(1);
    // Refused handshakes are a peer's doing: a few lines a second at most.
    let refused = Arc::new(DenialLog::new(HANDSHAKE_REFUSALS_LOGGED_PER_SECOND));
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(left_out) = full.admit(std::time::Instant::now()) {
                tracing::warn!(
                    left_out,
                    "connection refused: the connection cap is reached"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, verifier, tx, refused) = (
            acceptor.clone(),
            verifier.clone(),
            tx.clone(),
            refused.clone(),
        );
        let (timeout, lifetime) = (limits.handshake_timeout, limits.connection_lifetime());
        let Ok(mut running) = handshakes.lock() else {
            return;
        };
        if running.running.len() >= limits.max_handshakes
            && let Some((_, oldest)) = running.running.pop_first()
        {
            oldest.abort();
            if let Some(left_out) = evicted.admit(std::time::Instant::now()) {
                tracing::warn!(
                    left_out,
                    "handshake ended early to make room for a new connection"
                );
            }
        }
        let id = running.next;
        running.next += 1;
        let registry = handshakes.clone();
        // Spawned while the registry is locked, so the task's own removal
        // (which needs the lock) always follows its insertion.
        let task = tokio::spawn(async move {
            let conn = handshake(
                acceptor,
                verifier.as_ref(),
                &refused,
                tcp,
                remote,
                timeout,
                slot,
            )
            .await
            .map(|(stream, info, slot)| MeshConn {
                stream,
                info,
                _slot: slot,
                closes: Box::pin(tokio::time::sleep(lifetime)),
            });
            if let Ok(mut running) = registry.lock() {
                running.running.remove(&id);
            }
            if let Some(conn) = conn {
                let _ = tx.send(Ok(conn)).await;
            }
        });
        running.running.insert(id, task.abort_handle());
    }
}

/// Refused handshakes logged per second at most; the next line counts the
/// ones left out.
const HANDSHAKE_REFUSALS_LOGGED_PER_SECOND: u32 = 5;

/// The TLS handshake and the peer's identity, or `None`. A refusal is said
/// at info level (a peer's failure is not the server's) and at most a few
/// times a second (`refused`): a flood of bad handshakes cannot flood the log.
async fn handshake(
    acceptor: TlsAcceptor,
    verifier: &Reverify,
    refused: &DenialLog,
    tcp: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
    slot: OwnedSemaphorePermit,
) -> Option<(TlsStream<TcpStream>, PeerInfo, OwnedSemaphorePermit)> {
    let refuse = |why: &str, error: Option<String>| {
        if let Some(left_out) = refused.admit(std::time::Instant::now()) {
            tracing::info!(%remote, error = error.as_deref().unwrap_or(""), left_out, "{why}");
        }
    };
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            refuse("TLS handshake refused", Some(e.to_string()));
            return None;
        }
        Err(_) => {
            refuse("TLS handshake timed out", None);
            return None;
        }
    };
    let (_, session) = stream.get_ref();
    let chain: Vec<CertificateDer<'static>> = session
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let Some((leaf, intermediates)) = chain.split_first() else {
        refuse("peer presented no certificate", None);
        return None;
    };
    // A resumed session skipped verification: the chain it restored is
    // checked against the bundle and the time now, as a full handshake's is.
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
        && let Err(e) = verifier.check(leaf, intermediates)
    {
        refuse(
            "resumed session refused: its certificate no longer verifies",
            Some(e),
        );
        return None;
    }
    let leaf = leaf.clone();
    let identity = match SpiffeId::from_certificate(&leaf) {
        Ok(id) => id,
        Err(e) => {
            refuse(
                "peer certificate carries no usable identity",
                Some(e.to_string()),
            );
            return None;
        }
    };
    let info = PeerInfo::new(Some(remote), identity, leaf);
    Some((stream, info, slot))
}
