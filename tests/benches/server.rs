//! Weft's server stack against a bare tonic server with the same handler
//! (grpc.health.v1 Check), both over mTLS with the same certificate, driven
//! by a load generator in a process of its own (`weft-bench-load`) at
//! concurrency 1, 16 and 256. The Weft server is `weft_service::serve`:
//! its connection limits and accept loop, observation (span and metrics per
//! call), authorization, deadlines, health and reflection; the bare one is
//! tonic's `Server` on rustls with the same server configuration and no
//! layers. Each row runs bare and Weft in turn, `REPS` times each,
//! interleaved, and prints the median Weft/bare ratio with its spread.
//! Run: `cargo bench -p weft-tests --bench server`.

// Bench code: a panic is a failed run with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::service::Routes;
use tonic::transport::server::Connected;
use weft_mesh::{CertStore, IdentitySource, Policy, server_config};
use weft_service::{Config, Served, Transport};
use weft_tests::bench::{self, median, ratio_summary};
use weft_tests::pki::TestPki;

/// Interleaved repetitions of each side per row.
const REPS: usize = 5;
/// Seconds each repetition runs.
const SECONDS: &str = "2";

fn main() {
    bench::run(run()).unwrap();
}

/// A TLS connection to the bare server (tonic needs to know it is
/// connected; nothing else wraps it).
struct Bare(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for Bare {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Bare {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bare {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// tonic's server with the health service, on rustls, nothing else.
async fn bare_server(store: &CertStore) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(store).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bare>>(64);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok(Bare(tls))).await;
                }
            });
        }
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(Routes::new(health))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
    );
    addr
}

/// The whole Weft server: `weft_service::serve` with a policy (health is
/// always allowed in the trust domain) and its health and reflection.
async fn weft_server(identity: weft_mesh::IdentityPaths) -> SocketAddr {
    let transport = Transport::Mtls {
        identity: IdentitySource::Files(identity),
        policy: Some(Policy::from_toml("").unwrap()),
        reload_every: Duration::from_secs(60),
    };
    let config = Config::new(transport, tokio_postgres::Config::new());
    let served = Served {
        name: "bench",
        grpc_service: "grpc.health.v1.Health",
        routes: Routes::default(),
        ping: Arc::new(|| Box::pin(async { Ok(()) })),
        db: None,
        descriptor_sets: Vec::new(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        weft_service::serve(listener, &config, served, std::future::pending::<()>()).await
    });
    addr
}

/// (calls per second, p50 µs, p99 µs) from one run of the load generator.
async fn load(
    addr: SocketAddr,
    pki: &TestPki,
    server_id: &str,
    concurrency: usize,
) -> (f64, f64, f64) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weft-bench-load"));
    command
        .arg(addr.to_string())
        .arg(pki.dir())
        .arg("bench-client")
        .arg(server_id)
        .arg(concurrency.to_string())
        .arg(SECONDS);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("errors"), 0.0, "{text}");
    (
        field("calls") / field("seconds"),
        field("p50_us"),
        field("p99_us"),
    )
}

async fn run() {
    let pki = TestPki::new().unwrap();
    let server_paths = pki.service("bench-server", "bench").unwrap();
    pki.service("bench-client", "client").unwrap();
    let store = CertStore::load(server_paths.clone(), Duration::from_secs(60)).unwrap();
    let server_id = store.current().id.to_string();
    let bare = bare_server(&store).await;
    let weft = weft_server(server_paths).await;
    // Both answering before anything is measured.
    load(bare, &pki, &server_id, 1).await;
    load(weft, &pki, &server_id, 1).await;

    println!(
        "| concurrency | bare calls/s (median) | Weft calls/s (median) | Weft/bare ratio, median (min–max of {REPS}) | p50 µs bare / Weft | p99 µs bare / Weft |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for concurrency in [1, 16, 256] {
        let (mut b_rates, mut w_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut b_p, mut w_p) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            let b = load(bare, &pki, &server_id, concurrency).await;
            let w = load(weft, &pki, &server_id, concurrency).await;
            b_rates.push(b.0);
            w_rates.push(w.0);
            ratios.push(w.0 / b.0);
            b_p.push((b.1, b.2));
            w_p.push((w.1, w.2));
        }
        let p = |v: &[(f64, f64)], i: usize| {
            median(
                &v.iter()
                    .map(|x| if i == 0 { x.0 } else { x.1 })
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "| {concurrency} | {:.0} | {:.0} | {} | {:.0} / {:.0} | {:.0} / {:.0} |",
            median(&b_rates),
            median(&w_rates),
            ratio_summary(&ratios),
            p(&b_p, 0),
            p(&w_p, 0),
            p(&b_p, 1),
            p(&w_p, 1),
        );
    }
}
