//! Hostile callers at the connection level against a real inventory
//! server: a raw HTTP/2 client sees SETTINGS_MAX_CONCURRENT_STREAMS and is
//! refused streams past it; a flood of reset streams gets GOAWAY while
//! another caller keeps being served; stalled TCP connections past the
//! handshake cap are closed and leave a real caller served within a
//! second; connections past the cap are closed at once; and a client whose
//! CA left the bundle cannot come back by resuming its TLS session. Every
//! loop is bounded.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use weft_mesh::{CertStore, ServerLimits, client_config, mtls_channel};
use weft_tests::TestDb;
use weft_tests::inventory::{Inventory, config, inventory_id, mtls};
use weft_tests::pki::TestPki;

/// An inventory server within `limits`, and the operator identity's TLS
/// configuration for raw connections to it.
async fn server(db: &TestDb, limits: ServerLimits) -> (Inventory, Arc<rustls::ClientConfig>) {
    let pki = Arc::new(TestPki::new().unwrap());
    let mut cfg = config(
        db,
        mtls(pki.service("inventory", "inventory").unwrap(), None),
    );
    cfg.limits = limits;
    let operator = pki.operator("operator-test", "test").unwrap();
    let store = CertStore::load(operator.clone(), Duration::from_secs(60)).unwrap();
    let tls = client_config(&store, inventory_id().unwrap()).unwrap();
    let server = Inventory::start_with(cfg, Some(operator), Some(pki))
        .await
        .unwrap();
    (server, tls.config())
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// A raw HTTP/2 frame.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ACK: u8 = 1;
const REFUSED_STREAM: u32 = 7;
const CANCEL: u32 = 8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A gRPC request's headers for `path`, HPACK literals without indexing
/// (no Huffman), so no encoder is needed.
fn grpc_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "inventory"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

async fn read_frame(conn: &mut Tls) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    conn.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Opens an HTTP/2 connection: the preface and empty SETTINGS, then the
/// server's SETTINGS (acknowledged, so they apply); returns them as
/// (identifier, value) pairs.
async fn h2_open(conn: &mut Tls) -> Vec<(u16, u32)> {
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    conn.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    for _ in 0..10 {
        let f = read_frame(conn).await.unwrap();
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            conn.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            return f
                .payload
                .chunks(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
        }
    }
    panic!("no SETTINGS from the server");
}

/// Reads frames for up to `within`, until `done` says so; returns them.
async fn frames_until(
    conn: &mut Tls,
    within: Duration,
    done: impl Fn(&Frame) -> bool,
) -> Vec<Frame> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(Ok(f)) = tokio::time::timeout_at(deadline, read_frame(conn)).await {
        let stop = done(&f);
        seen.push(f);
        if stop || seen.len() > 10_000 {
            break;
        }
    }
    seen
}

/// Calls grpc.health Check `n` times over `channel`; the failures.
async fn health_calls(channel: tonic::transport::Channel, n: usize) -> Vec<String> {
    let mut client = HealthClient::new(channel);
    let mut failed = Vec::new();
    for _ in 0..n {
        if let Err(s) = client.check(HealthCheckRequest::default()).await {
            failed.push(s.to_string());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    failed
}

#[tokio::test]
async fn streams_past_the_advertised_cap_are_refused_and_a_reset_flood_gets_goaway() {
    let db = TestDb::create().await.unwrap();
    let limits = ServerLimits {
        max_concurrent_streams: 8,
        max_pending_accept_reset_streams: 20,
        ..ServerLimits::default()
    };
    let (server, tls) = server(&db, limits).await;

    // The cap is advertised (SETTINGS_MAX_CONCURRENT_STREAMS is 0x3).
    let mut conn = tls_connect(server.addr(), tls.clone()).await.unwrap();
    let settings = h2_open(&mut conn).await;
    assert!(settings.contains(&(0x3, 8)), "SETTINGS: {settings:?}");

    // Nine health watches (streams that stay open), past the cap by one:
    // the ninth is refused with REFUSED_STREAM.
    for i in 0..9u32 {
        let id = 1 + 2 * i;
        conn.write_all(&frame(
            HEADERS,
            END_HEADERS,
            id,
            &grpc_headers("/grpc.health.v1.Health/Watch"),
        ))
        .await
        .unwrap();
        // An empty HealthCheckRequest: a gRPC message of length 0.
        conn.write_all(&frame(DATA, END_STREAM, id, &[0, 0, 0, 0, 0]))
            .await
            .unwrap();
    }
    let seen = frames_until(&mut conn, Duration::from_secs(5), |f| f.kind == RST_STREAM).await;
    let refused: Vec<&Frame> = seen.iter().filter(|f| f.kind == RST_STREAM).collect();
    assert_eq!(refused.len(), 1, "{seen:?}");
    assert_eq!(refused[0].stream, 17);
    assert_eq!(
        u32::from_be_bytes(refused[0].payload[..4].try_into().unwrap()),
        REFUSED_STREAM
    );
    println!("stream cap: 8 advertised, the 9th stream refused with REFUSED_STREAM");

    // A flood of streams opened and reset at once, while an operator keeps
    // calling on its own connection.
    let other = tokio::spawn(health_calls(server.channel().await.unwrap(), 200));
    let mut flood = tls_connect(server.addr(), tls).await.unwrap();
    h2_open(&mut flood).await;
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(
            HEADERS,
            END_HEADERS,
            id,
            &grpc_headers("/grpc.health.v1.Health/Check"),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The server may close the connection mid-burst.
    let _ = flood.write_all(&burst).await;
    let seen = frames_until(&mut flood, Duration::from_secs(5), |f| f.kind == GOAWAY).await;
    let goaway = seen
        .iter()
        .find(|f| f.kind == GOAWAY)
        .expect("no GOAWAY after 500 reset streams");
    // ENHANCE_YOUR_CALM (0xb).
    assert_eq!(
        u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap()),
        0xb,
        "{goaway:?}"
    );
    let failed = other.await.unwrap();
    assert!(failed.is_empty(), "the other caller failed: {failed:?}");
}

/// By default the server advertises its stream cap and header list size,
/// and a connection past its maximum age gets GOAWAY, its open stream
/// (a health watch, which never ends by itself) lasts the grace, and then
/// the connection closes.
#[tokio::test]
async fn the_defaults_are_advertised_and_an_aged_connection_goes_away_then_closes() {
    let db = TestDb::create().await.unwrap();
    let defaults = ServerLimits::default();
    let limits = ServerLimits {
        max_connection_age: Duration::from_millis(500),
        max_connection_age_grace: Duration::from_millis(1500),
        ..ServerLimits::default()
    };
    let (server, tls) = server(&db, limits).await;
    let mut conn = tls_connect(server.addr(), tls).await.unwrap();
    let started = Instant::now();
    let settings = h2_open(&mut conn).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3), SETTINGS_MAX_HEADER_LIST_SIZE (0x6).
    assert!(
        settings.contains(&(0x3, defaults.max_concurrent_streams)),
        "{settings:?}"
    );
    assert!(
        settings.contains(&(0x6, defaults.max_header_list_size)),
        "{settings:?}"
    );
    conn.write_all(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &grpc_headers("/grpc.health.v1.Health/Watch"),
    ))
    .await
    .unwrap();
    conn.write_all(&frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]))
        .await
        .unwrap();
    let seen = frames_until(&mut conn, Duration::from_secs(5), |f| f.kind == GOAWAY).await;
    let goaway_at = started.elapsed();
    assert!(seen.iter().any(|f| f.kind == GOAWAY), "no GOAWAY: {seen:?}");
    assert!(
        goaway_at >= Duration::from_millis(400),
        "GOAWAY at {goaway_at:?}"
    );
    // The watch stays open through the grace; then the connection ends.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match read_frame(&mut conn).await {
                Ok(f) => rest.push(f),
                Err(_) => return started.elapsed(),
            }
        }
    })
    .await
    .expect("the aged connection was never closed");
    assert!(
        closed >= Duration::from_millis(1800),
        "closed at {closed:?}, before the grace was over"
    );
    println!(
        "connection age: GOAWAY at {goaway_at:?}, closed at {closed:?} (age 0.5 s, grace 1.5 s)"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn stalled_connections_past_the_handshake_cap_leave_a_real_caller_served_at_once() {
    let db = TestDb::create().await.unwrap();
    let limits = ServerLimits {
        max_handshakes: 16,
        ..ServerLimits::default()
    };
    let (server, _) = server(&db, limits).await;

    // 200 connections that never say a word.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        stalled.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    // A real caller, on a new connection, meanwhile.
    let started = Instant::now();
    let failed = health_calls(server.channel().await.unwrap(), 1).await;
    let latency = started.elapsed();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        latency < Duration::from_secs(1),
        "the real caller waited {latency:?}"
    );

    // The server kept at most the cap of them: the others are closed.
    let mut closed = 0;
    for s in &mut stalled {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 200 - 16 - 1,
        "only {closed} of 200 stalled connections were closed"
    );
    println!(
        "stalled connections: 200 opened, {closed} closed by the handshake cap of 16; a real caller served in {latency:?}"
    );
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let db = TestDb::create().await.unwrap();
    let limits = ServerLimits {
        max_connections: 4,
        ..ServerLimits::default()
    };
    let (server, tls) = server(&db, limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = tls_connect(server.addr(), tls.clone()).await.unwrap();
        h2_open(&mut conn).await;
        held.push(conn);
    }
    // The fifth is closed before its handshake can finish.
    let fifth = tokio::time::timeout(Duration::from_secs(2), async {
        let mut conn = tls_connect(server.addr(), tls.clone()).await?;
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        read_frame(&mut conn).await
    })
    .await
    .unwrap();
    assert!(fifth.is_err(), "a fifth connection was served: {fifth:?}");
    // One closes; a new one is served.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = tls_connect(server.addr(), tls).await.unwrap();
    h2_open(&mut conn).await;
}

/// A certificate store for `id`, issued by `ca` into `dir`, trusting
/// `trust_bundle`.
fn issued_by(
    ca: &weft::certs::DevCa,
    id: &weft_mesh::SpiffeId,
    dir: &std::path::Path,
    trust_bundle: std::path::PathBuf,
) -> CertStore {
    let issued = ca.issue(id, weft::certs::Validity::days(1), &[]).unwrap();
    let (cert, key) = issued.write(dir, "issued", true).unwrap();
    CertStore::load(
        weft_mesh::IdentityPaths {
            cert,
            key,
            trust_bundle,
        },
        Duration::from_secs(60),
    )
    .unwrap()
}

/// A trust bundle in `dir` with our CA and `other`; and ours alone, to
/// write over it when `other` leaves.
fn bundle_with(
    pki: &TestPki,
    other: &weft::certs::DevCa,
    dir: &std::path::Path,
) -> (std::path::PathBuf, String) {
    let bundle = dir.join("bundle.pem");
    let ours = std::fs::read_to_string(pki.ca_path()).unwrap();
    std::fs::write(&bundle, format!("{ours}\n{}", other.cert_pem())).unwrap();
    (bundle, ours)
}

/// Calls `addr` with `tls` while the other CA is trusted (a first call, a
/// connection that must resume, and a resumed call, all served), then
/// takes the other CA out of `bundle` (leaving `ours`), waits until
/// `reloading` has the new bundle, and returns the failures of one more
/// call, which would resume.
async fn calls_across_a_ca_leaving(
    addr: std::net::SocketAddr,
    tls: &weft_mesh::ClientTls,
    bundle: &std::path::Path,
    ours: &str,
    reloading: &CertStore,
) -> Vec<String> {
    let call = || {
        let channel = mtls_channel(addr, tls.clone()).unwrap();
        async move { health_calls(channel, 1).await }
    };
    assert_eq!(
        call().await,
        Vec::<String>::new(),
        "the first call, trusted"
    );
    // Resumed while the chain still verifies (so the refusal after is the
    // check of the restored chain, not a full handshake failing).
    let resumed = tls_connect(addr, tls.config()).await.unwrap();
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    drop(resumed);
    assert_eq!(
        call().await,
        Vec::<String>::new(),
        "a resumed call, trusted"
    );
    let generation = reloading.current().generation;
    std::fs::write(bundle, ours).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloading.current().generation == generation {
        assert!(Instant::now() < deadline, "the bundle was not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call().await
}

#[tokio::test]
async fn a_client_whose_ca_left_the_bundle_cannot_come_back_by_resuming() {
    let pki = TestPki::new().unwrap();
    // The server trusts its own CA and, at first, another one.
    let other = weft::certs::DevCa::create(
        weft_tests::pki::TRUST_DOMAIN,
        weft::certs::Validity::days(30),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (bundle, ours) = bundle_with(&pki, &other, dir.path());
    let mut served = pki.service("served", "inventory").unwrap();
    served.trust_bundle = bundle.clone();
    let server_store = CertStore::load(served, Duration::from_millis(50)).unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let addr = weft_tests::servers::serve_mtls(&server_store, tonic::service::Routes::new(health))
        .await
        .unwrap();

    // A client with a certificate from the other CA; one TLS configuration
    // (and so one session cache) for every connection, as a process keeps.
    let client_store = issued_by(
        &other,
        &weft_mesh::SpiffeId::operator(weft_tests::pki::TRUST_DOMAIN, "leaver").unwrap(),
        dir.path(),
        pki.ca_path(),
    );
    // Weft's clients keep sessions and offer to resume them.
    let tls = client_config(&client_store, inventory_id().unwrap()).unwrap();
    // The other CA leaves the server's bundle.
    let failed = calls_across_a_ca_leaving(addr, &tls, &bundle, &ours, &server_store).await;
    // A new connection from the same client (which would offer to resume)
    // is refused.
    assert_eq!(
        failed.len(),
        1,
        "a client whose CA left the bundle was served again"
    );
}

/// The client's side of the same: a server whose CA left the client's
/// bundle cannot be reached again by resuming a session made while it was
/// trusted.
#[tokio::test]
async fn a_server_whose_ca_left_the_bundle_cannot_be_reached_by_resuming() {
    let pki = TestPki::new().unwrap();
    let other = weft::certs::DevCa::create(
        weft_tests::pki::TRUST_DOMAIN,
        weft::certs::Validity::days(30),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The server: inventory's identity from the other CA; it trusts ours.
    let server_store = issued_by(&other, &inventory_id().unwrap(), dir.path(), pki.ca_path());
    let (_reporter, health) = tonic_health::server::health_reporter();
    let addr = weft_tests::servers::serve_mtls(&server_store, tonic::service::Routes::new(health))
        .await
        .unwrap();

    // The client trusts ours and, at first, the other CA.
    let (bundle, ours) = bundle_with(&pki, &other, dir.path());
    let mut client = pki.operator("caller", "caller").unwrap();
    client.trust_bundle = bundle.clone();
    let client_store = CertStore::load(client, Duration::from_millis(50)).unwrap();
    let tls = client_config(&client_store, inventory_id().unwrap()).unwrap();
    // The other CA leaves the client's bundle.
    let failed = calls_across_a_ca_leaving(addr, &tls, &bundle, &ours, &client_store).await;
    // A session is still there to resume, and a new channel would; it is
    // refused.
    assert_eq!(
        failed.len(),
        1,
        "a server whose CA left the bundle was reached again"
    );
}
