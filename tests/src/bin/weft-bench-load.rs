//! A load generator in a process of its own, for the server benchmark:
//! unary grpc.health.v1 Check calls over mTLS to one address, from
//! `concurrency` tasks over `concurrency / 64` (at least one) HTTP/2
//! connections, for a number of seconds after a warm-up; prints one line,
//! `calls=… seconds=… p50_us=… p99_us=… errors=…`.
//!
//! `weft-bench-load ADDR CERTS_DIR CLIENT_NAME SERVER_ID CONCURRENCY SECONDS`
//! (CERTS_DIR holds ca.pem and CLIENT_NAME.pem / .key, as the test PKI
//! writes them; SERVER_ID is the SPIFFE id the server must present).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use weft_mesh::{CertStore, IdentityPaths, SpiffeId, client_config, mtls_channel};

/// Calls per connection at most, as a client library would spread them.
const PER_CONNECTION: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, certs, client, server, concurrency, seconds] = args.as_slice() else {
        anyhow::bail!(
            "usage: weft-bench-load ADDR CERTS_DIR CLIENT_NAME SERVER_ID CONCURRENCY SECONDS"
        );
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let certs = PathBuf::from(certs);
    let concurrency: usize = concurrency.parse().context("CONCURRENCY")?;
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    let expected = SpiffeId::parse(server).map_err(|e| anyhow::anyhow!("SERVER_ID: {e}"))?;
    let identity = IdentityPaths {
        cert: certs.join(format!("{client}.pem")),
        key: certs.join(format!("{client}.key")),
        trust_bundle: certs.join("ca.pem"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = CertStore::load(identity, Duration::from_secs(3600))?;
        let connections = concurrency.div_ceil(PER_CONNECTION).max(1);
        let mut clients = Vec::new();
        for _ in 0..connections {
            let tls = client_config(&store, expected.clone())?;
            let mut c = HealthClient::new(mtls_channel(addr, tls)?);
            // Connected and warm before the clock starts.
            for _ in 0..200 {
                c.check(HealthCheckRequest::default()).await?;
            }
            clients.push(c);
        }
        let run_for = Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let mut client = clients[i % connections].clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = 0u64;
                    while started.elapsed() < run_for {
                        let t = Instant::now();
                        match client.check(HealthCheckRequest::default()).await {
                            Ok(_) => latencies.push(t.elapsed()),
                            Err(_) => errors += 1,
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await?;
            all.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        println!(
            "calls={} seconds={elapsed:.3} p50_us={:.0} p99_us={:.0} errors={errors}",
            all.len(),
            pct(0.5),
            pct(0.99)
        );
        Ok(())
    })
}
