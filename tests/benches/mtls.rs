//! The cost of mTLS, printed: full handshakes per second (session resumption
//! off) against plain TCP connects; a new connection and its first call
//! with a full handshake against a resumed one (which Weft verifies
//! again); and unary calls over one long-lived connection with mTLS
//! against plaintext, in the same process and run.
//! Run: `cargo bench -p weft-tests --bench mtls`.

// Bench code: a panic is a failed run with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use weft_mesh::provider::{KeyExchange, set_key_exchange};
use weft_mesh::{ClientTls, client_config, mtls_channel};
use weft_tests::pki::TestPki;
use weft_tests::servers::serve_mtls;

const HANDSHAKES: usize = 2000;
const CALLS: usize = 20_000;
const CONCURRENCY: usize = 16;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let pki = TestPki::new().unwrap();
    let server_store = pki.service_store("bench-server", "bench").unwrap();
    let client_store = pki.service_store("bench-client", "client").unwrap();
    let client_tls = client_config(&client_store, server_store.current().id).unwrap();

    let (_reporter, health) = tonic_health::server::health_reporter();
    let tls_addr = serve_mtls(&server_store, Routes::new(health.clone()))
        .await
        .unwrap();
    let plain_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain_listener.local_addr().unwrap();
    let plain_server = Server::builder()
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(plain_listener).with_nodelay(Some(true)));
    tokio::spawn(plain_server);

    // Full handshakes versus bare TCP connects.
    let tcp_rate = connects_per_second(plain_addr, None).await;
    let mut fresh = (*client_tls.config()).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let tls_rate = connects_per_second(tls_addr, Some(Arc::new(fresh))).await;
    println!(
        "mTLS full handshakes: {tls_rate:.0}/s (plain TCP connects: {tcp_rate:.0}/s; ratio {:.3}) over {HANDSHAKES} sequential connections",
        tls_rate / tcp_rate
    );

    // The same with the post-quantum hybrid key exchange off at both ends
    // (the default above is X25519MLKEM768; this is X25519).
    set_key_exchange(KeyExchange::Classical);
    let (_classical_reporter, classical_health) = tonic_health::server::health_reporter();
    let classical_addr = serve_mtls(&server_store, Routes::new(classical_health))
        .await
        .unwrap();
    let mut classical = (*client_config(&client_store, server_store.current().id)
        .unwrap()
        .config())
    .clone();
    classical.resumption = rustls::client::Resumption::disabled();
    let classical_rate = connects_per_second(classical_addr, Some(Arc::new(classical))).await;
    set_key_exchange(KeyExchange::Hybrid);
    println!(
        "key exchange: X25519MLKEM768 {tls_rate:.0} handshakes/s, X25519 {classical_rate:.0}/s; ratio {:.3}, {:+.0} µs per handshake",
        tls_rate / classical_rate,
        (1.0 / tls_rate - 1.0 / classical_rate) * 1e6
    );

    // Resumption: a new connection and its first call with a full
    // handshake against a resumed one. Weft resumes, and each side verifies
    // the restored peer chain against the current bundle and time (a full
    // handshake's check, without its signatures and key exchange).
    let mut full_client = (*client_tls.config()).clone();
    full_client.resumption = rustls::client::Resumption::disabled();
    let full = first_calls_per_second(tls_addr, client_tls.with_config(full_client)).await;
    let resumed = first_calls_per_second(tls_addr, client_tls.clone()).await;
    println!(
        "resumption: new connection + first call {full:.0}/s with a full handshake, {resumed:.0}/s resumed and re-verified (Weft); ratio {:.3}, {:+.0} µs per new connection",
        resumed / full,
        (1.0 / resumed - 1.0 / full) * 1e6
    );

    // Unary calls on one long-lived connection.
    let plain = Channel::from_shared(format!("http://{plain_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tls = mtls_channel(tls_addr, client_tls).unwrap();
    for (label, concurrency) in [("sequential", 1), ("16 concurrent", CONCURRENCY)] {
        let plain_us = per_call(plain.clone(), concurrency).await;
        let tls_us = per_call(tls.clone(), concurrency).await;
        println!(
            "unary health check, {label}: mTLS {tls_us:.1} µs/call, plaintext {plain_us:.1} µs/call (ratio {:.2}, +{:.1} µs)",
            tls_us / plain_us,
            tls_us - plain_us
        );
    }
}

async fn connects_per_second(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> f64 {
    let started = Instant::now();
    for _ in 0..HANDSHAKES {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        if let Some(tls) = &tls {
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .unwrap();
            drop(stream);
        }
    }
    HANDSHAKES as f64 / started.elapsed().as_secs_f64()
}

/// New connections per second, each carrying one health check.
async fn first_calls_per_second(addr: SocketAddr, tls: ClientTls) -> f64 {
    let n = HANDSHAKES / 2;
    let started = Instant::now();
    for _ in 0..n {
        let channel = mtls_channel(addr, tls.clone()).unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Mean wall time per call (µs) with `concurrency` callers sharing `channel`.
async fn per_call(channel: Channel, concurrency: usize) -> f64 {
    // Warm up the connection and the code paths.
    let mut warm = HealthClient::new(channel.clone());
    for _ in 0..500 {
        warm.check(HealthCheckRequest::default()).await.unwrap();
    }
    let started = Instant::now();
    let per_task = CALLS / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = HealthClient::new(channel.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    client.check(HealthCheckRequest::default()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed().as_secs_f64() * 1e6 / (per_task * concurrency) as f64
}
