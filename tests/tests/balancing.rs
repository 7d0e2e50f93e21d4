//! The mesh client against several real inventory instances over mTLS with
//! the local discovery backend: failover on a killed instance, load-aware
//! balancing, new instances, and the retry budget.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::service::Routes;
use tonic::{Request, Response, Status};
use weft_mesh::ClientOptions;
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use weft_tests::TestDb;
use weft_tests::cluster::Cluster;
use weft_tests::load::{
    Client, KillReport, calls_by_id, finish, get_stock_load as load, kill_under_load,
    measuring_shares, seed, wait_for_endpoints,
};
use weft_tests::servers::serve_mtls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_fails_no_idempotent_call() {
    // Its load and restarts would delay the share test's calls.
    let _alone = measuring_shares().await;
    let db = TestDb::create().await.unwrap();
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        cluster.add(&db, None).await.unwrap();
    }
    let channel = cluster
        .channel(ClientOptions {
            connections_per_endpoint: 2,
            ..ClientOptions::default()
        })
        .await
        .unwrap();
    wait_for_endpoints(&channel, 3).await.unwrap();
    let KillReport {
        calls,
        failures,
        before_kill,
        after_one_second,
        later,
    } = kill_under_load(&channel, "inv-1", || cluster.kill(1))
        .await
        .unwrap();

    assert_eq!(failures, 0, "{failures} of {calls} idempotent calls failed");
    assert!(calls > 100, "only {calls} calls");
    // The dead endpoint gets nothing after a second (and leaves the pool when
    // its discovery record expires).
    assert!(before_kill > 0, "the victim was in use before it died");
    assert_eq!(
        later, after_one_second,
        "calls reached the dead instance after 1 s"
    );
    let shares = calls_by_id(&channel);
    assert!(
        shares.get("inv-0").copied().unwrap_or(0) > 0
            && shares.get("inv-2").copied().unwrap_or(0) > 0
    );
}

/// A TCP proxy to `upstream` (set once known) that delays every chunk from
/// the client by `delay`.
async fn delaying_proxy(
    upstream: Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
    delay: Duration,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Some(upstream) = *upstream.lock().unwrap() else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = ri.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut ro, &mut wi).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_gets_a_much_smaller_share() {
    let _alone = measuring_shares().await;
    let db = TestDb::create().await.unwrap();
    let mut cluster = Cluster::new().unwrap();
    cluster.add(&db, None).await.unwrap();
    cluster.add(&db, None).await.unwrap();
    // The third instance advertises a proxy that adds 25 ms per request.
    let target = Arc::new(std::sync::Mutex::new(None));
    let proxy = delaying_proxy(target.clone(), Duration::from_millis(25)).await;
    let slow = cluster.add(&db, Some(proxy)).await.unwrap();
    *target.lock().unwrap() = Some(cluster.instances[slow].as_ref().unwrap().addr());

    let channel = cluster.channel(ClientOptions::default()).await.unwrap();
    wait_for_endpoints(&channel, 3).await.unwrap();
    let mut client = Client::new(channel.clone());
    seed(&mut client).await.unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let workers = load(&client, 8, &running);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (calls, failures) = finish(&running, workers).await.unwrap();
    assert_eq!(failures, 0);
    let shares = calls_by_id(&channel);
    let slow_calls = shares.get(&format!("inv-{slow}")).copied().unwrap_or(0) as f64;
    let fast = (shares.get("inv-0").copied().unwrap_or(0)
        + shares.get("inv-1").copied().unwrap_or(0)) as f64
        / 2.0;
    eprintln!("calls {calls}; shares {shares:?}");
    assert!(slow_calls > 0.0, "the slow instance is still used");
    assert!(
        slow_calls < fast * 0.25,
        "slow instance got {slow_calls} calls against {fast} per fast instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_receives_calls_within_a_resolver_period() {
    let db = TestDb::create().await.unwrap();
    let mut cluster = Cluster::new().unwrap();
    cluster.add(&db, None).await.unwrap();
    cluster.add(&db, None).await.unwrap();
    let channel = cluster.channel(ClientOptions::default()).await.unwrap();
    wait_for_endpoints(&channel, 2).await.unwrap();
    let mut client = Client::new(channel.clone());
    seed(&mut client).await.unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let workers = load(&client, 4, &running);

    let n = cluster.add(&db, None).await.unwrap();
    // Measured from the moment the instance is registered and serving.
    let registered = Instant::now();
    let id = format!("inv-{n}");
    let deadline = registered + Duration::from_secs(5);
    loop {
        if calls_by_id(&channel).get(&id).copied().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new instance got no call within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = registered.elapsed();
    let (_, failures) = finish(&running, workers).await.unwrap();
    assert_eq!(failures, 0);
    // One local-resolver period is 100 ms, then a health round trip; the
    // bound leaves room for a loaded machine and is still far below the 1 s
    // record TTL or a Cloud Map refresh.
    assert!(took < Duration::from_secs(1), "first call after {took:?}");
}

/// An inventory whose every call fails with UNAVAILABLE while its health
/// stays SERVING: what an overloaded or broken backend looks like.
#[derive(Debug, Clone)]
struct Failing(Arc<AtomicU64>);

macro_rules! failing {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl InventoryService for Failing {
            $(async fn $method(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                self.0.fetch_add(1, Ordering::Relaxed);
                Err(Status::unavailable("backend down"))
            })*
        }
    };
}

failing! {
    create_product(pb::CreateProductRequest) -> pb::CreateProductResponse;
    get_product(pb::GetProductRequest) -> pb::GetProductResponse;
    list_products(pb::ListProductsRequest) -> pb::ListProductsResponse;
    get_stock(pb::GetStockRequest) -> pb::GetStockResponse;
    adjust_stock(pb::AdjustStockRequest) -> pb::AdjustStockResponse;
    reserve_stock(pb::ReserveStockRequest) -> pb::ReserveStockResponse;
    commit_reservation(pb::CommitReservationRequest) -> pb::CommitReservationResponse;
    release_reservation(pb::ReleaseReservationRequest) -> pb::ReleaseReservationResponse;
    return_reservation(pb::ReturnReservationRequest) -> pb::ReturnReservationResponse;
    get_reservation(pb::GetReservationRequest) -> pb::GetReservationResponse;
}

/// Three instances that answer every call with UNAVAILABLE while their
/// health stays SERVING, registered in a fresh cluster's discovery; the
/// counter counts the calls they received.
async fn failing_cluster() -> (Cluster, Arc<AtomicU64>) {
    let cluster = Cluster::new().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let store = cluster.inventory_store().unwrap();
    for n in 0..3 {
        // Health stays SERVING: only the calls fail.
        let (_reporter, health) = tonic_health::server::health_reporter();
        let routes =
            Routes::new(health).add_service(InventoryServiceServer::new(Failing(received.clone())));
        let addr = serve_mtls(&store, routes).await.unwrap();
        cluster.register(&format!("bad-{n}"), addr).await.unwrap();
    }
    (cluster, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_retries_when_every_instance_fails() {
    let (cluster, received) = failing_cluster().await;
    // Ejection is off here, so only the budget can stop the retries.
    let mut options = ClientOptions::default();
    options.failure.consecutive_failures = u32::MAX;
    let channel = cluster.channel(options).await.unwrap();
    wait_for_endpoints(&channel, 3).await.unwrap();
    let client = Client::new(channel);

    let requests = 600u64;
    let mut tasks = Vec::new();
    for t in 0..6 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..requests / 6 {
                let err = client
                    .get_stock(pb::GetStockRequest {
                        skus: vec![format!("S{t}")],
                    })
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), tonic::Code::Unavailable);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let attempts = received.load(Ordering::Relaxed);
    let retries = attempts - requests;
    // 20% of requests, plus 10 per second over the 10 s window (a reserve of 100).
    let allowed = (requests as f64 * 0.2 + 10.0 * (10.0 + seconds)) as u64;
    eprintln!(
        "{requests} requests, {attempts} attempts, {retries} retries (budget {allowed}) in {seconds:.2} s"
    );
    assert!(retries > 0, "safe calls were retried at all");
    assert!(
        retries <= allowed,
        "{retries} retries exceed the budget of {allowed}"
    );
    assert!(
        attempts < requests * 2,
        "without a budget there would be {} attempts",
        requests * 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_drain_fails_no_call_even_unretried_ones() {
    // Its load and restarts would delay the share test's calls.
    let _alone = measuring_shares().await;
    let db = TestDb::create().await.unwrap();
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        cluster.add(&db, None).await.unwrap();
    }
    // No method counts as safe: only requests that never reached a server
    // may be retried, so the drain alone must keep every call whole.
    let channel = cluster
        .channel_with(ClientOptions::default(), weft_mesh::Idempotency::default())
        .await
        .unwrap();
    wait_for_endpoints(&channel, 3).await.unwrap();
    let mut client = Client::new(channel.clone());
    seed(&mut client).await.unwrap();

    let running = Arc::new(AtomicBool::new(true));
    let readers = load(&client, 3, &running);
    // Writers: stock adjustments, each with its own key.
    let adjusted = Arc::new(AtomicU64::new(0));
    let writer_failures = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (mut client, running) = (client.clone(), running.clone());
        let (adjusted, failures) = (adjusted.clone(), writer_failures.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            let started = Instant::now();
            while running.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                i += 1;
                let result = client
                    .adjust_stock(pb::AdjustStockRequest {
                        idempotency_key: format!("w{w}-{i}"),
                        sku: "A".into(),
                        delta: 1,
                        reason: String::new(),
                    })
                    .await;
                match result {
                    Ok(_) => adjusted.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("failed write: {e:?}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for old in 0..3 {
        // Replace each instance: the new one first, then the old one drains.
        cluster.add(&db, None).await.unwrap();
        cluster.stop(old).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (calls, failures) = finish(&running, readers).await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let writes = adjusted.load(Ordering::Relaxed);
    assert_eq!(failures, 0, "{failures} of {calls} reads failed");
    assert_eq!(writer_failures.load(Ordering::Relaxed), 0, "writes failed");
    assert!(calls > 50 && writes > 20, "{calls} reads, {writes} writes");
    // Every acknowledged write happened exactly once.
    let mut check = Client::new(channel);
    let stock = check
        .get_stock(pb::GetStockRequest {
            skus: vec!["A".into()],
        })
        .await
        .unwrap();
    assert_eq!(stock.into_inner().stock[0].available, 5 + writes as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_takes_an_endpoint_out_within_a_round_trip() {
    let cluster = Cluster::new().unwrap();
    let store = cluster.inventory_store().unwrap();
    let mut reporters = Vec::new();
    for n in 0..2 {
        let (reporter, health) = tonic_health::server::health_reporter();
        let addr = serve_mtls(&store, Routes::new(health)).await.unwrap();
        cluster.register(&format!("h-{n}"), addr).await.unwrap();
        reporters.push(reporter);
    }
    let channel = cluster.channel(ClientOptions::default()).await.unwrap();
    wait_for_endpoints(&channel, 2).await.unwrap();
    let h0 = channel
        .endpoints()
        .iter()
        .find(|e| e.id == "h-0")
        .cloned()
        .unwrap();

    // Discovery still lists h-0 as healthy; only its health stream changes.
    let started = Instant::now();
    reporters[0]
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    while h0.available() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "h-0 stayed in the pool"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    // One health-stream round trip on loopback, with room for a loaded machine.
    assert!(took < Duration::from_millis(250), "out after {took:?}");
    let before = h0.calls.load(Ordering::Relaxed);
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..50 {
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
    }
    assert_eq!(
        h0.calls.load(Ordering::Relaxed),
        before,
        "no call went to the NOT_SERVING endpoint"
    );
    // SERVING again: back in the pool.
    reporters[0]
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    wait_for_endpoints(&channel, 2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_each_call_is_one_attempt() {
    let (cluster, received) = failing_cluster().await;
    let mut options = ClientOptions {
        max_attempts: 1,
        ..ClientOptions::default()
    };
    // Ejection off, so every call finds an endpoint to fail on.
    options.failure.consecutive_failures = u32::MAX;
    let channel = cluster.channel(options).await.unwrap();
    wait_for_endpoints(&channel, 3).await.unwrap();
    let mut client = Client::new(channel);
    for _ in 0..50 {
        let err = client
            .get_stock(pb::GetStockRequest {
                skus: vec!["A".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
    assert_eq!(
        received.load(Ordering::Relaxed),
        50,
        "one attempt per call, the body streamed through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_leaves_takes_its_metric_series_with_it() {
    let cluster = Cluster::new().unwrap();
    let store = cluster.inventory_store().unwrap();
    let mut addrs = Vec::new();
    let mut reporters = Vec::new();
    for n in 0..2 {
        let (reporter, health) = tonic_health::server::health_reporter();
        let addr = serve_mtls(&store, Routes::new(health)).await.unwrap();
        cluster.register(&format!("m-{n}"), addr).await.unwrap();
        addrs.push(addr);
        reporters.push(reporter);
    }
    let metrics = Arc::new(weft_mesh::Metrics::new());
    let channel = cluster
        .channel(ClientOptions {
            metrics: metrics.clone(),
            ..ClientOptions::default()
        })
        .await
        .unwrap();
    wait_for_endpoints(&channel, 2).await.unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..40 {
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
    }
    let peer = |a: std::net::SocketAddr| format!("peer=\"{a}\"");
    // The balancer may have kept to one endpoint; that one leaves.
    let text = metrics.render();
    let called = (0..2)
        .find(|&n| text.contains(&peer(addrs[n])))
        .expect("an endpoint was called");
    let stays = 1 - called;
    cluster.deregister(&format!("m-{called}")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while channel.endpoints().len() > 1 {
        assert!(Instant::now() < deadline, "m-0 never left the pool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Calls now go to the one that stays, which keeps its series.
    for _ in 0..5 {
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
    }
    let text = metrics.render();
    assert!(
        !text.contains(&peer(addrs[called])),
        "the endpoint that left kept its series"
    );
    assert!(text.contains(&peer(addrs[stays])), "{text}");
}
