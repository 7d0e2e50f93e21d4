//! The mesh client against a plain tonic channel, printed: throughput and
//! p50/p99 of small unary calls (grpc.health.v1 Check) at concurrency 1, 16
//! and 64, over mTLS: the Weft client to three instances, to one, and a plain
//! `Channel` to one, in one run. Each row runs its clients in turn, `REPS`
//! times, interleaved (plain, Weft, plain, Weft, …), and prints the median
//! of the per-repetition ratios to the plain channel with their spread: a
//! single run on a shared machine cannot tell 0.95 from 1.0. Each run also
//! records this process's CPU time per call (client and servers share it;
//! the servers' share is the same for every client), which a shared
//! machine disturbs less than calls/s.
//! Run: `cargo bench -p weft-tests --bench client`.

// Bench code: a panic is a failed run with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::client::GrpcService;
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use weft_mesh::{CertStore, ClientOptions, MeshChannel, MeshClient, client_config, mtls_channel};
use weft_tests::bench::{self, median, ratio_summary};
use weft_tests::pki::TestPki;
use weft_tests::servers::serve_mtls;

const CALLS: usize = 20_000;

/// Interleaved repetitions of every client per row.
const REPS: usize = 5;

fn main() {
    bench::run(run()).unwrap();
}

async fn mesh(
    addrs: &[SocketAddr],
    store: &CertStore,
    expected: weft_mesh::SpiffeId,
    options: ClientOptions,
) -> MeshChannel {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let client = MeshClient::connect(
        &format!("static://bench={}", list.join(",")),
        Some(store.clone()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(client.expected("bench").unwrap(), Some(expected));
    let channel = client.channel_with("bench", options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while channel.endpoints().iter().filter(|e| e.available()).count() < addrs.len() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    channel
}

/// (calls per second, p50 µs, p99 µs, this process's CPU µs per call)
async fn measure<T>(client: HealthClient<T>, concurrency: usize) -> (f64, f64, f64, f64)
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Future: Send,
{
    let mut warm = client.clone();
    for _ in 0..500 {
        warm.check(HealthCheckRequest::default()).await.unwrap();
    }
    let per_task = CALLS / concurrency;
    let cpu_before = weft_service::load::cpu_seconds().unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    client.check(HealthCheckRequest::default()).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(CALLS);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = weft_service::load::cpu_seconds().unwrap() - cpu_before;
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
    (
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        cpu * 1e6 / all.len() as f64,
    )
}

async fn run() {
    let pki = TestPki::new().unwrap();
    let server_store = pki.service_store("bench-server", "bench").unwrap();
    let client_store = pki.service_store("bench-client", "client").unwrap();
    let expected = server_store.current().id;
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let (_reporter, health) = tonic_health::server::health_reporter();
        addrs.push(
            serve_mtls(&server_store, Routes::new(health))
                .await
                .unwrap(),
        );
    }
    let three = mesh(
        &addrs,
        &client_store,
        expected.clone(),
        ClientOptions::default(),
    )
    .await;
    let one = mesh(
        &addrs[..1],
        &client_store,
        expected.clone(),
        ClientOptions::default(),
    )
    .await;
    let no_retries = ClientOptions {
        max_attempts: 1,
        ..ClientOptions::default()
    };
    let one_streamed = mesh(&addrs[..1], &client_store, expected.clone(), no_retries).await;
    let plain = mtls_channel(addrs[0], client_config(&client_store, expected).unwrap()).unwrap();

    println!(
        "| concurrency | client | calls/s (median) | p50 µs | p99 µs | vs plain channel, median (min–max of {REPS}) | CPU µs per call (client and server) | plain/this CPU per call, median (min–max) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for concurrency in [1, 16, 64] {
        let clients = [
            (
                "plain Channel, 1 instance",
                Client::Plain(HealthClient::new(plain.clone())),
            ),
            (
                "Weft, 1 instance",
                Client::Mesh(HealthClient::new(one.clone())),
            ),
            (
                "Weft, 1 instance, retries off",
                Client::Mesh(HealthClient::new(one_streamed.clone())),
            ),
            (
                "Weft, 3 instances",
                Client::Mesh(HealthClient::new(three.clone())),
            ),
        ];
        // runs[client][rep] = (calls/s, p50, p99, CPU µs per call)
        let mut runs: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); clients.len()];
        for _ in 0..REPS {
            for (i, (_, client)) in clients.iter().enumerate() {
                runs[i].push(client.measure(concurrency).await);
            }
        }
        for (i, (label, _)) in clients.iter().enumerate() {
            let ratios: Vec<f64> = (0..REPS).map(|r| runs[i][r].0 / runs[0][r].0).collect();
            let cpu_ratios: Vec<f64> = (0..REPS).map(|r| runs[0][r].3 / runs[i][r].3).collect();
            println!(
                "| {concurrency} | {label} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} |",
                median(&runs[i].iter().map(|r| r.0).collect::<Vec<_>>()),
                median(&runs[i].iter().map(|r| r.1).collect::<Vec<_>>()),
                median(&runs[i].iter().map(|r| r.2).collect::<Vec<_>>()),
                ratio_summary(&ratios),
                median(&runs[i].iter().map(|r| r.3).collect::<Vec<_>>()),
                ratio_summary(&cpu_ratios),
            );
        }
    }
}

/// A client of either kind, measured the same way.
enum Client {
    Plain(HealthClient<tonic::transport::Channel>),
    Mesh(HealthClient<MeshChannel>),
}

impl Client {
    async fn measure(&self, concurrency: usize) -> (f64, f64, f64, f64) {
        match self {
            Self::Plain(c) => measure(c.clone(), concurrency).await,
            Self::Mesh(c) => measure(c.clone(), concurrency).await,
        }
    }
}
