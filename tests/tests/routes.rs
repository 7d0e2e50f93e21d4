//! Live routing with real inventory instances over mTLS: two on version 1.4
//! and two on 1.5, registered with their versions, and mesh clients that
//! follow a route table in a file. A 95/5 split lands within two points over
//! 2,000 calls; a caller carrying the test header reaches only 1.5; a weight
//! change reaches the client within one poll; a malformed update is refused
//! and the table in use kept. And `weft route shift` to a version whose
//! instances fail one call in five rolls back by itself.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Server;
use tonic::{Response, Status};
use weft_mesh::{Metrics, ObserveLayer};
use weft_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use weft_service::metrics_endpoint::{Probes, serve_metrics};

use weft_mesh::{ClientOptions, FileSource, MeshChannel, RoutePolling, Routes, SourceEvents};
use weft_proto::inventory::v1 as pb;
use weft_tests::TestDb;
use weft_tests::cluster::Cluster;
use weft_tests::load::{Client, seed, wait_for_endpoints};
use weft_tests::servers::mtls_listener;

/// Calls per version, from the client's endpoint counters.
fn by_version(channel: &MeshChannel) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for e in channel.endpoints().iter() {
        let version = e.attributes.get("version").cloned().unwrap_or_default();
        *counts.entry(version).or_default() += e.calls.load(Ordering::Relaxed);
    }
    counts
}

fn split(new_weight: u32) -> String {
    format!(
        r#"
        [services.inventory]
        match = [{{ header = "x-weft-route", value = "canary", subset = {{ version = "1.5" }} }}]
        split = [
          {{ subset = {{ version = "1.4" }}, weight = {} }},
          {{ subset = {{ version = "1.5" }}, weight = {new_weight} }},
        ]
        "#,
        100 - new_weight
    )
}

/// Makes `n` GetStock calls from 4 tasks, with the test header when
/// `canary`; returns the calls each version received meanwhile.
async fn calls(channel: &MeshChannel, n: usize, canary: bool) -> HashMap<String, u64> {
    let before = by_version(channel);
    let client = Client::new(channel.clone());
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..n / 4 {
                    let mut request = tonic::Request::new(pb::GetStockRequest {
                        skus: vec!["A".into()],
                    });
                    if canary {
                        request
                            .metadata_mut()
                            .insert("x-weft-route", "canary".parse().unwrap());
                    }
                    client.get_stock(request).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = by_version(channel);
    after
        .into_iter()
        .map(|(v, c)| {
            let was = before.get(&v).copied().unwrap_or(0);
            (v, c - was)
        })
        .collect()
}

fn share_of_new(counts: &HashMap<String, u64>) -> f64 {
    let new = counts.get("1.5").copied().unwrap_or(0) as f64;
    let all: u64 = counts.values().sum();
    new / all.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_route_table_splits_routes_by_header_and_follows_its_file() {
    let db = TestDb::create().await.unwrap();
    let mut cluster = Cluster::new().unwrap();
    for version in ["1.4", "1.4", "1.5", "1.5"] {
        cluster
            .add_with(&db, None, &[("version", version)])
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, split(5)).unwrap();
    let poll = Duration::from_millis(200);
    let events = SourceEvents::default();
    let routes = Routes::follow(
        FileSource(path.clone()),
        RoutePolling {
            every: poll,
            ..RoutePolling::default()
        },
        events.clone(),
    )
    .await;
    let mut options = ClientOptions {
        routes,
        ..ClientOptions::default()
    };
    // Slow start would shape the first seconds' shares; the split is what
    // is measured here.
    options.failure.slow_start = Duration::ZERO;
    options.pick_timeout = Duration::from_millis(300);
    let channel = cluster.channel(options).await.unwrap();
    wait_for_endpoints(&channel, 4).await.unwrap();
    seed(&mut Client::new(channel.clone())).await.unwrap();

    // 95/5 over 2,000 calls.
    let counts = calls(&channel, 2000, false).await;
    let share = share_of_new(&counts);
    eprintln!(
        "95/5 split over 2000 calls: {counts:?}, 1.5 took {:.2}%",
        share * 100.0
    );
    assert!((0.03..=0.07).contains(&share), "{counts:?}");

    // The test header reaches only the new version.
    let counts = calls(&channel, 400, true).await;
    assert_eq!(counts.get("1.4").copied().unwrap_or(0), 0, "{counts:?}");
    assert_eq!(counts.get("1.5").copied().unwrap_or(0), 400, "{counts:?}");

    // A weight change reaches the client within one poll.
    std::fs::write(&path, split(50)).unwrap();
    let written = Instant::now();
    while events.applied.get() < 2 {
        assert!(written.elapsed() < poll * 3, "not applied within a poll");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = written.elapsed();
    eprintln!("a weight change applied {took:?} after the write (poll {poll:?})");
    assert!(took <= poll + poll / 2, "{took:?}");
    let counts = calls(&channel, 2000, false).await;
    let share = share_of_new(&counts);
    assert!((0.45..=0.55).contains(&share), "{counts:?}");

    // A malformed update is refused and the table in use kept.
    std::fs::write(&path, "[services.inventory]\nsplit = [{ weight = 1 }]").unwrap();
    tokio::time::sleep(poll * 3).await;
    assert_eq!(events.rejected.get(), 1);
    assert_eq!(events.stale.get(), 1);
    let counts = calls(&channel, 1000, false).await;
    let share = share_of_new(&counts);
    assert!((0.42..=0.58).contains(&share), "still 50/50: {counts:?}");

    // A split to a version with no endpoint gives way to the others; a
    // header match to it fails rather than reach another version.
    std::fs::write(
        &path,
        r#"
        [services.inventory]
        match = [{ header = "x-weft-route", value = "canary", subset = { version = "9.9" } }]
        split = [{ subset = { version = "9.9" }, weight = 1 }]
        "#,
    )
    .unwrap();
    let applied = events.applied.get();
    while events.applied.get() == applied {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = calls(&channel, 200, false).await;
    assert_eq!(counts.values().sum::<u64>(), 200, "{counts:?}");
    let mut client = Client::new(channel.clone());
    let mut request = tonic::Request::new(pb::GetStockRequest {
        skus: vec!["A".into()],
    });
    request
        .metadata_mut()
        .insert("x-weft-route", "canary".parse().unwrap());
    let err = client.get_stock(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("version=9.9"), "{err:?}");
}

/// A GetStock-only inventory that fails every `fail_every`-th call with
/// INTERNAL (0: never).
#[derive(Clone)]
struct Flaky {
    fail_every: u64,
    calls: Arc<AtomicU64>,
}

weft_tests::get_stock_only!(Flaky, |this, _request| {
    let n = this.calls.fetch_add(1, Ordering::Relaxed) + 1;
    if this.fail_every > 0 && n.is_multiple_of(this.fail_every) {
        return Err(Status::internal("broken build"));
    }
    Ok(Response::new(pb::GetStockResponse::default()))
});

/// Serves `service` over mTLS with Weft's server metrics, and its /metrics
/// on a port of its own; returns both addresses.
async fn serve_observed(
    cluster: &Cluster,
    service: Flaky,
) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let store = cluster.inventory_store().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (addr, incoming) = mtls_listener(&store, &Default::default()).await.unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let served: HashSet<String> =
        ["/weft.inventory.v1.InventoryService/GetStock".to_owned()].into();
    tokio::spawn(
        Server::builder()
            .layer(ObserveLayer::new(metrics.clone(), served))
            .add_service(health)
            .add_service(InventoryServiceServer::new(service))
            .serve_with_incoming(incoming),
    );
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    tokio::spawn(serve_metrics(
        metrics_listener,
        metrics,
        Arc::new(Probes::default()),
    ));
    (addr, metrics_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_route_shift_to_a_failing_version_rolls_back_by_itself() {
    let cluster = Cluster::new().unwrap();
    for (id, version, fail_every) in [
        ("old-1", "1.4", 0),
        ("old-2", "1.4", 0),
        ("new-1", "1.5", 5),
        ("new-2", "1.5", 5),
    ] {
        let flaky = Flaky {
            fail_every,
            calls: Arc::new(AtomicU64::new(0)),
        };
        let (addr, metrics) = serve_observed(&cluster, flaky).await;
        let port = metrics.port().to_string();
        cluster
            .register_with(id, addr, &[("version", version), ("metrics_port", &port)])
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        "[services.inventory]\nsplit = [{ subset = { version = \"1.4\" }, weight = 100 }]\n",
    )
    .unwrap();
    let routes = Routes::follow(
        FileSource(path.clone()),
        RoutePolling {
            every: Duration::from_millis(200),
            ..RoutePolling::default()
        },
        SourceEvents::default(),
    )
    .await;
    let mut options = ClientOptions {
        routes,
        ..ClientOptions::default()
    };
    options.failure.slow_start = Duration::ZERO;
    let channel = cluster.channel(options).await.unwrap();
    wait_for_endpoints(&channel, 4).await.unwrap();

    // Steady load, counting what callers see.
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = Client::new(channel.clone());
            let (running, ok, failed) = (running.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let answer = client.get_stock(pb::GetStockRequest { skus: vec![] }).await;
                    match answer {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the old version does not fail"
    );

    let operator = cluster.pki().operator("operator-dev", "dev").unwrap();
    let certs = operator.cert.parent().unwrap().to_owned();
    let (ok_before, failed_before) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let started = Instant::now();
    let routes_arg = path.display().to_string();
    let certs_arg = certs.display().to_string();
    let setting = cluster.setting();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(weft_tests::process::binary("weft").unwrap())
            .args([
                "route",
                "--routes",
                &routes_arg,
                "shift",
                "inventory",
                "--from",
                "version=1.4",
                "--to",
                "version=1.5",
                "--steps",
                "10,50,100",
                "--interval",
                "3s",
                "--every",
                "250ms",
                "--max-error-rate",
                "0.05",
                "--min-calls",
                "20",
                "--certs",
                &certs_arg,
                "--discovery",
                &setting,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    // A poll for the clients to follow the rollback, then the tally.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let calls =
        ok.load(Ordering::Relaxed) - ok_before + failed.load(Ordering::Relaxed) - failed_before;
    let failures = failed.load(Ordering::Relaxed) - failed_before;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "{stdout}{}\nthe shift took {took:?}; callers saw {failures} failures in {calls} calls ({:.2}%)",
        String::from_utf8_lossy(&output.stderr),
        failures as f64 * 100.0 / calls.max(1) as f64
    );
    assert!(!output.status.success(), "a rollback exits with failure");
    assert!(stdout.contains("ROLLED BACK at step 10%"), "{stdout}");
    // The table sends nothing to the failing version any more.
    let table = weft_mesh::RouteTable::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let split = table.service("inventory").unwrap().split().to_vec();
    assert!(
        split
            .iter()
            .any(|(s, w)| s.to_string() == "version=1.5" && *w == 0),
        "{split:?}"
    );
    // At a 10% step, one call in five failing there is 2% of all calls;
    // the rollback came before the next step.
    assert!(failures * 100 <= calls * 3, "{failures} of {calls}");
    let settled = failed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        failed.load(Ordering::Relaxed),
        settled,
        "no failure after the rollback"
    );
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
}
