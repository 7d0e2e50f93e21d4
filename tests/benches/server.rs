//! Weft's server stack against a bare tonic server with the same handler
//! (grpc.health.v1 Check), both over mTLS with the same certificate, driven
//! by a load generator in a process of its own (`weft-bench-load`) at
//! concurrency 1, 16 and 256. The Weft server is `weft_service::serve`:
//! its connection limits and accept loop, observation (span and metrics per
//! call), authorization, deadlines, health and reflection; the bare one is
//! tonic's `Server` on rustls with the same server configuration and no
//! layers. Each row runs bare, Weft and bare again in a rotating order,
//! `REPS` times each, and prints the median Weft/bare ratio with its
//! spread, beside the same ratio between the two bare runs (the control:
//! what the bench cannot tell from no difference).
//! Beside throughput it prints the server's CPU time per call (this
//! process's, while only one of the servers is loaded): on two cores shared
//! with the load generator, throughput moves with scheduling from run to
//! run, while the CPU a call costs the server is what a larger machine
//! would turn into throughput, and varies much less.
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

/// Repetitions per row, each running every side once (a multiple of three,
/// so that the rotating order puts every side in every place equally).
const REPS: usize = 6;
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

/// One run of the load generator against one server.
struct Run {
    /// Calls per second.
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// This process's CPU time per call, in microseconds.
    cpu_us: f64,
}

async fn load(addr: SocketAddr, pki: &TestPki, server_id: &str, concurrency: usize) -> Run {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weft-bench-load"));
    command
        .arg(addr.to_string())
        .arg(pki.dir())
        .arg("bench-client")
        .arg(server_id)
        .arg(concurrency.to_string())
        .arg(SECONDS);
    let cpu_before = weft_service::load::cpu_seconds().unwrap();
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let cpu = weft_service::load::cpu_seconds().unwrap() - cpu_before;
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
    Run {
        rate: field("calls") / field("seconds"),
        p50_us: field("p50_us"),
        p99_us: field("p99_us"),
        cpu_us: cpu * 1e6 / field("calls").max(1.0),
    }
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
        "| concurrency | bare calls/s (median) | Weft calls/s (median) | Weft/bare calls/s, median (min–max of {REPS}) | control: bare/bare calls/s | p50 µs bare / Weft | p99 µs bare / Weft | server CPU µs per call bare / Weft (median) | bare/Weft CPU per call | control: bare/bare CPU per call |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for concurrency in [1, 16, 256] {
        // Each repetition runs bare, Weft and bare again, in an order that
        // rotates, so that each takes each place equally often: a run's
        // place in the sequence moves its figures by as much as the
        // difference being measured. The second bare run is the control:
        // how far apart two runs of the same server land.
        let mut runs: [Vec<Run>; 3] = Default::default();
        for rep in 0..REPS {
            for k in 0..3 {
                let side = (rep + k) % 3;
                let addr = if side == 1 { weft } else { bare };
                runs[side].push(load(addr, &pki, &server_id, concurrency).await);
            }
        }
        let [bare_runs, weft_runs, again] = &runs;
        let of = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let per_rep = |over: &[Run], under: &[Run], f: fn(&Run, &Run) -> f64| {
            ratio_summary(
                &over
                    .iter()
                    .zip(under)
                    .map(|(o, u)| f(o, u))
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "| {concurrency} | {:.0} | {:.0} | {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {} | {} |",
            of(bare_runs, |r| r.rate),
            of(weft_runs, |r| r.rate),
            per_rep(weft_runs, bare_runs, |o, u| o.rate / u.rate),
            per_rep(again, bare_runs, |o, u| o.rate / u.rate),
            of(bare_runs, |r| r.p50_us),
            of(weft_runs, |r| r.p50_us),
            of(bare_runs, |r| r.p99_us),
            of(weft_runs, |r| r.p99_us),
            of(bare_runs, |r| r.cpu_us),
            of(weft_runs, |r| r.cpu_us),
            per_rep(bare_runs, weft_runs, |o, u| o.cpu_us / u.cpu_us),
            per_rep(bare_runs, again, |o, u| o.cpu_us / u.cpu_us),
        );
    }
}
