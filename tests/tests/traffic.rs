//! Traffic control with real servers over mTLS: an endpoint that answers
//! "overloaded" draws fewer calls than a healthy one; a caller over its
//! rate limit is pushed back while another caller is not, and the mesh
//! client waits the push-back out; a chain of three hops failing at its end
//! makes at most the bound of attempts there; and calls stay in the
//! client's zone while it is healthy and spill within a health round trip
//! when it is not.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::service::Routes;
use tonic::transport::Server;
use tonic::{Code, Response, Status};
use weft_mesh::{ClientOptions, DeadlineLayer, MeshChannel, Policy, RetriesLayer};
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use weft_tests::TestDb;
use weft_tests::cluster::Cluster;
use weft_tests::inventory::{Inventory, config, mtls};
use weft_tests::load::{
    Client, calls_by_id, finish, get_stock_load, measuring_shares, wait_for_endpoints,
};
use weft_tests::pki::TRUST_DOMAIN;
use weft_tests::servers::{mtls_listener, serve_mtls};

/// Answers every GetStock at once with RESOURCE_EXHAUSTED, as a throttled
/// backend does, while its health stays SERVING.
#[derive(Clone)]
struct Throttled(Arc<AtomicU64>);

weft_tests::get_stock_only!(Throttled, |this, _request| {
    this.0.fetch_add(1, Ordering::Relaxed);
    Err(Status::resource_exhausted("too many requests"))
});

/// Fails every GetStock with UNAVAILABLE, counting the attempts.
#[derive(Clone)]
struct Down(Arc<AtomicU64>);

weft_tests::get_stock_only!(Down, |this, _request| {
    this.0.fetch_add(1, Ordering::Relaxed);
    Err(Status::unavailable("backend down"))
});

/// Answers every GetStock, counting them.
#[derive(Clone)]
struct Answering(Arc<AtomicU64>);

weft_tests::get_stock_only!(Answering, |this, _request| {
    this.0.fetch_add(1, Ordering::Relaxed);
    Ok(Response::new(pb::GetStockResponse::default()))
});

/// Forwards GetStock through the mesh client (the next hop).
#[derive(Clone)]
struct Relay(MeshChannel);

weft_tests::get_stock_only!(Relay, |this, request| {
    InventoryServiceClient::new(this.0.clone())
        .get_stock(request.into_inner())
        .await
});

/// Answers every GetStock after a millisecond of work, counting them: a
/// healthy backend (with no load report, so that only latency and the
/// overload penalty steer the pick).
#[derive(Clone)]
struct Working(Arc<AtomicU64>);

weft_tests::get_stock_only!(Working, |this, _request| {
    this.0.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(Response::new(pb::GetStockResponse::default()))
});

/// Calls a healthy stand-in and a throttled one drew over 2 s of load from
/// 4 workers, with the client charging overloaded answers `penalty`.
async fn healthy_and_throttled_shares(penalty: Duration) -> (u64, u64) {
    let _alone = measuring_shares().await;
    let cluster = Cluster::new().unwrap();
    let store = cluster.inventory_store().unwrap();
    let healthy = Arc::new(AtomicU64::new(0));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes =
        Routes::new(health).add_service(InventoryServiceServer::new(Working(healthy.clone())));
    let addr = serve_mtls(&store, routes).await.unwrap();
    cluster.register("healthy", addr).await.unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes = Routes::new(health).add_service(InventoryServiceServer::new(Throttled(Arc::new(
        AtomicU64::new(0),
    ))));
    let addr = serve_mtls(&store, routes).await.unwrap();
    cluster.register("throttled", addr).await.unwrap();

    let mut options = ClientOptions::default();
    options.failure.overload_penalty = penalty;
    let channel = cluster.channel(options).await.unwrap();
    wait_for_endpoints(&channel, 2).await.unwrap();
    let client = Client::new(channel.clone());
    let before = calls_by_id(&channel);
    let running = Arc::new(AtomicBool::new(true));
    let workers = get_stock_load(&client, 4, &running);
    tokio::time::sleep(Duration::from_secs(2)).await;
    finish(&running, workers).await.unwrap();
    let after = calls_by_id(&channel);
    let got = |id: &str| after.get(id).unwrap_or(&0) - before.get(id).unwrap_or(&0);
    (got("healthy"), got("throttled"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_resource_exhausted_draws_fewer_calls_than_a_healthy_one() {
    let (healthy, throttled) =
        healthy_and_throttled_shares(weft_mesh::client::FailurePolicy::default().overload_penalty)
            .await;
    let ratio = throttled as f64 / healthy.max(1) as f64;
    // Charged as a fast success, as before the penalty, it draws more.
    let (was_healthy, was_throttled) = healthy_and_throttled_shares(Duration::ZERO).await;
    let was = was_throttled as f64 / was_healthy.max(1) as f64;
    eprintln!(
        "throttled/healthy calls: {ratio:.3} ({throttled}/{healthy}) with the penalty, \
         {was:.3} ({was_throttled}/{was_healthy}) without"
    );
    assert!(healthy > 100, "the healthy endpoint served only {healthy}");
    assert!(ratio < 0.2, "with the penalty: {ratio:.3}");
    assert!(
        was > 1.0,
        "without it the throttled endpoint draws more: {was:.3}"
    );
}

/// A policy letting orders and operators read inventory, with orders
/// limited to 5 GetStock calls a second (bursts of 5).
fn limited_policy() -> Policy {
    Policy::from_toml(&format!(
        r#"
        [[allow]]
        methods = ["weft.inventory.v1.InventoryService/*"]
        callers = ["spiffe://{TRUST_DOMAIN}/service/orders", "spiffe://{TRUST_DOMAIN}/operator/*"]

        [[limit]]
        methods = ["weft.inventory.v1.InventoryService/GetStock"]
        callers = ["spiffe://{TRUST_DOMAIN}/service/orders"]
        rate = 5
        burst = 5
        "#
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_limit_is_pushed_back_and_another_is_not() {
    let db = TestDb::create().await.unwrap();
    let cluster = Cluster::new().unwrap();
    let pki = cluster.pki().clone();
    let cfg = config(
        &db,
        mtls(
            pki.service("inventory", "inventory").unwrap(),
            Some(limited_policy()),
        ),
    );
    let metrics = cfg.metrics.clone();
    let operator = pki.operator("operator-bob", "bob").unwrap();
    let inventory = Inventory::start_with(cfg, Some(operator.clone()), Some(pki.clone()))
        .await
        .unwrap();
    let mut bob = inventory.client().await.unwrap();
    bob.create_product(pb::CreateProductRequest {
        idempotency_key: "seed".into(),
        sku: "A".into(),
        name: "A".into(),
        unit_price: Some(weft_tests::mesh::eur(1)),
        initial_stock: 5,
    })
    .await
    .unwrap();
    let read = || pb::GetStockRequest {
        skus: vec!["A".into()],
    };

    // Orders, on a plain channel: its burst, then push-back.
    let mut orders = InventoryServiceClient::new(
        inventory
            .channel_as(pki.service("orders", "orders").unwrap())
            .unwrap(),
    );
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(orders.get_stock(read()).await);
    }
    let ok = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(ok, 5, "the burst passes, then no more: {answers:?}");
    let refused = answers.iter().find_map(|a| a.as_ref().err()).unwrap();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a push-back")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=200).contains(&pushback),
        "a token every 200 ms: {pushback}"
    );
    assert!(!refused.message().contains("orders"), "{refused:?}");
    // Meanwhile another caller is not limited at all.
    for _ in 0..20 {
        bob.get_stock(read()).await.unwrap();
    }
    let text = metrics.render();
    assert!(
        text.contains("weft_server_rate_limited_total{limit=\"1\"} 3"),
        "{}",
        text.lines()
            .filter(|l| l.contains("rate_limited"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Through the mesh client, a safe method waits the push-back out: every
    // call succeeds, paced at the limit.
    cluster.register("limited", inventory.addr()).await.unwrap();
    let channel = cluster.channel(ClientOptions::default()).await.unwrap();
    wait_for_endpoints(&channel, 1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut paced = InventoryServiceClient::new(channel);
    let started = Instant::now();
    for _ in 0..12 {
        paced.get_stock(read()).await.unwrap();
    }
    let took = started.elapsed();
    eprintln!("12 calls at 5/s (burst 5) through the mesh client took {took:?}");
    // Five at once, then one every 200 ms (the client retries each refused
    // call after the push-back, within its three attempts).
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    inventory.stop().await.unwrap();
}

/// Serves `service` over mTLS as inventory of `cluster`'s PKI, with the
/// layers that carry deadlines and the retry count across hops.
async fn serve_hop<S: InventoryService>(cluster: &Cluster, service: S) -> std::net::SocketAddr {
    let store = cluster.inventory_store().unwrap();
    let (addr, incoming) = mtls_listener(&store, &Default::default()).await.unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = Server::builder()
        .layer(DeadlineLayer)
        .layer(RetriesLayer)
        .add_service(health)
        .add_service(InventoryServiceServer::new(service))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    addr
}

/// Attempts that reach the end of caller → A → B → C when C is down, with
/// every client retrying up to three attempts within `chain_retries`.
async fn attempts_at_the_end_of_three_hops(chain_retries: u32) -> u64 {
    let options = || {
        let mut options = ClientOptions {
            chain_retries,
            ..ClientOptions::default()
        };
        // One endpoint per hop: ejection would hide attempts.
        options.failure.consecutive_failures = u32::MAX;
        options
    };
    let (to_a, to_b, to_c) = (
        Cluster::new().unwrap(),
        Cluster::new().unwrap(),
        Cluster::new().unwrap(),
    );
    let reached = Arc::new(AtomicU64::new(0));
    let c = serve_hop(&to_c, Down(reached.clone())).await;
    to_c.register("c", c).await.unwrap();
    let b_channel = to_c.channel(options()).await.unwrap();
    wait_for_endpoints(&b_channel, 1).await.unwrap();
    let b = serve_hop(&to_b, Relay(b_channel)).await;
    to_b.register("b", b).await.unwrap();
    let a_channel = to_b.channel(options()).await.unwrap();
    wait_for_endpoints(&a_channel, 1).await.unwrap();
    let a = serve_hop(&to_a, Relay(a_channel)).await;
    to_a.register("a", a).await.unwrap();
    let caller = to_a.channel(options()).await.unwrap();
    wait_for_endpoints(&caller, 1).await.unwrap();

    let err = InventoryServiceClient::new(caller)
        .get_stock(pb::GetStockRequest {
            skus: vec!["A".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    reached.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_hop_chain_failing_at_its_end_makes_at_most_the_bound_of_attempts() {
    let bounded = attempts_at_the_end_of_three_hops(2).await;
    let unbounded = attempts_at_the_end_of_three_hops(u32::MAX).await;
    eprintln!(
        "attempts at the far end: {bounded} with a chain bound of 2 retries, {unbounded} without"
    );
    // Every path from the caller to C spends at most 2 retries in all: the
    // (a, b, c) retry counts with a + b + c <= 2, ten of them.
    assert_eq!(bounded, 10);
    // Without the bound each hop multiplies: 3 × 3 × 3.
    assert_eq!(unbounded, 27);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_in_the_zone_while_it_serves_and_spill_when_it_does_not() {
    let _alone = measuring_shares().await;
    let cluster = Cluster::new().unwrap();
    let store = cluster.inventory_store().unwrap();
    let mut reporters = Vec::new();
    let mut received = HashMap::new();
    for (id, zone) in [
        ("a1", "eu-west-1a"),
        ("a2", "eu-west-1a"),
        ("b1", "eu-west-1b"),
        ("b2", "eu-west-1b"),
    ] {
        let (reporter, health) = tonic_health::server::health_reporter();
        let count = Arc::new(AtomicU64::new(0));
        let routes =
            Routes::new(health).add_service(InventoryServiceServer::new(Answering(count.clone())));
        let addr = serve_mtls(&store, routes).await.unwrap();
        cluster
            .register_with(id, addr, &[("zone", zone)])
            .await
            .unwrap();
        received.insert(id, count);
        reporters.push((zone, reporter));
    }
    let metrics = Arc::new(weft_mesh::Metrics::new());
    let channel = cluster
        .channel(ClientOptions {
            zone: Some("eu-west-1a".into()),
            metrics: metrics.clone(),
            ..ClientOptions::default()
        })
        .await
        .unwrap();
    wait_for_endpoints(&channel, 4).await.unwrap();
    let mut client = InventoryServiceClient::new(channel.clone());
    let count = |ids: &[&str]| {
        ids.iter()
            .map(|id| received[id].load(Ordering::Relaxed))
            .sum::<u64>()
    };
    for _ in 0..1000 {
        client
            .get_stock(pb::GetStockRequest { skus: vec![] })
            .await
            .unwrap();
    }
    let same = count(&["a1", "a2"]);
    eprintln!("healthy: {same} of 1000 calls stayed in the zone");
    assert!(same >= 950, "{same} of 1000 in the zone");

    // The zone's instances say NOT_SERVING: the next calls go elsewhere,
    // within a health round trip.
    let before = count(&["b1", "b2"]);
    let flipped = Instant::now();
    for (zone, reporter) in &mut reporters {
        if *zone == "eu-west-1a" {
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
    loop {
        client
            .get_stock(pb::GetStockRequest { skus: vec![] })
            .await
            .unwrap();
        if count(&["b1", "b2"]) > before {
            break;
        }
        assert!(flipped.elapsed() < Duration::from_secs(2), "no spill");
    }
    let took = flipped.elapsed();
    eprintln!("spilled to the other zone {took:?} after NOT_SERVING");
    assert!(took < Duration::from_millis(500), "{took:?}");
    let in_zone_before = count(&["a1", "a2"]);
    for _ in 0..100 {
        client
            .get_stock(pb::GetStockRequest { skus: vec![] })
            .await
            .unwrap();
    }
    assert_eq!(
        count(&["a1", "a2"]),
        in_zone_before,
        "nothing more to the draining zone"
    );
    let text = metrics.render();
    assert!(
        text.lines().any(
            |l| l.starts_with("weft_client_cross_zone_total{upstream=\"inventory\"}")
                && l.ends_with(&format!(" {}", count(&["b1", "b2"])))
        ),
        "{}",
        text.lines()
            .filter(|l| l.contains("cross_zone"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_file_applies_within_a_poll_and_a_malformed_one_is_refused() {
    let db = TestDb::create().await.unwrap();
    let cluster = Cluster::new().unwrap();
    let pki = cluster.pki().clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let allow_bob = format!(
        "[[allow]]\nmethods = [\"weft.inventory.v1.InventoryService/*\"]\ncallers = [\"spiffe://{TRUST_DOMAIN}/operator/bob\"]\n"
    );
    std::fs::write(&path, &allow_bob).unwrap();
    let mut cfg = config(
        &db,
        mtls(
            pki.service("inventory", "inventory").unwrap(),
            Some(Policy::load(&path).unwrap()),
        ),
    );
    cfg.policy_source = Some(weft_service::routes::SourceSetting::File(path.clone()));
    cfg.policy_poll = Duration::from_millis(200);
    let metrics = cfg.metrics.clone();
    let operator = pki.operator("operator-bob", "bob").unwrap();
    let inventory = Inventory::start_with(cfg, Some(operator), Some(pki.clone()))
        .await
        .unwrap();
    let mut bob = inventory.client().await.unwrap();
    let read = pb::ListProductsRequest::default;
    for _ in 0..5 {
        bob.list_products(read()).await.unwrap();
    }
    let applied = |m: &weft_mesh::Metrics| m.policy.applied.get();
    let before = applied(&metrics);

    // A limit appears: within a poll, bob is held to it.
    std::fs::write(
        &path,
        format!(
            "{allow_bob}[[limit]]\nmethods = [\"weft.inventory.v1.InventoryService/*\"]\ncallers = [\"spiffe://{TRUST_DOMAIN}/operator/bob\"]\nrate = 1\nburst = 1\n"
        ),
    )
    .unwrap();
    let written = Instant::now();
    while applied(&metrics) == before {
        assert!(written.elapsed() < Duration::from_secs(2), "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("policy reloaded {:?} after the write", written.elapsed());
    let mut refused = 0;
    for _ in 0..3 {
        if let Err(e) = bob.list_products(read()).await {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "one call a second, bursts of one");

    // A malformed policy is refused; the one in use stays.
    std::fs::write(
        &path,
        "[[allow]]\nmethods = [\"Nope\"]\ncallers = [\"*\"]\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metrics.policy.rejected.get(), 1);
    assert_eq!(metrics.policy.stale.get(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    bob.list_products(read()).await.unwrap();
    assert_eq!(
        bob.list_products(read()).await.unwrap_err().code(),
        Code::ResourceExhausted,
        "still limited"
    );

    // Bob's permission withdrawn: denied from the next poll on.
    std::fs::write(
        &path,
        format!("[[allow]]\nmethods = [\"weft.inventory.v1.InventoryService/*\"]\ncallers = [\"spiffe://{TRUST_DOMAIN}/operator/alice\"]\n"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        bob.list_products(read()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    inventory.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_s_share_grows_over_its_slow_start_window() {
    let _alone = measuring_shares().await;
    let cluster = Cluster::new().unwrap();
    let store = cluster.inventory_store().unwrap();
    let serve = |count: Arc<AtomicU64>| {
        let store = store.clone();
        async move {
            let (_reporter, health) = tonic_health::server::health_reporter();
            let routes =
                Routes::new(health).add_service(InventoryServiceServer::new(Answering(count)));
            serve_mtls(&store, routes).await.unwrap()
        }
    };
    for id in ["old-1", "old-2"] {
        let addr = serve(Arc::new(AtomicU64::new(0))).await;
        cluster.register(id, addr).await.unwrap();
    }
    let window = Duration::from_secs(4);
    let mut options = ClientOptions::default();
    options.failure.slow_start = window;
    let channel = cluster.channel(options).await.unwrap();
    wait_for_endpoints(&channel, 2).await.unwrap();
    // Past the old ones' own slow start.
    tokio::time::sleep(window).await;

    let running = Arc::new(AtomicBool::new(true));
    let workers = get_stock_load(&Client::new(channel.clone()), 4, &running);
    let new = Arc::new(AtomicU64::new(0));
    let addr = serve(new.clone()).await;
    cluster.register("new", addr).await.unwrap();
    wait_for_endpoints(&channel, 3).await.unwrap();
    // Its share of the calls in each quarter of the window, then after it.
    let total = || {
        channel
            .endpoints()
            .iter()
            .map(|e| e.calls.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    // Four quarters, then twice as long after the window, where the share
    // is steadier.
    let mut shares = Vec::new();
    for period in [window / 4, window / 4, window / 4, window / 4, window / 2] {
        let (new_before, all_before) = (new.load(Ordering::Relaxed), total());
        tokio::time::sleep(period).await;
        let (new_calls, all) = (
            new.load(Ordering::Relaxed) - new_before,
            total() - all_before,
        );
        shares.push(new_calls as f64 / all.max(1) as f64);
    }
    let (_, failures) = finish(&running, workers).await.unwrap();
    assert_eq!(failures, 0, "every call answered");
    eprintln!(
        "the new endpoint's share by quarter of its {window:?} slow start, then after: {:?}",
        shares.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>()
    );
    // A third of the calls is its full share among three.
    assert!(shares[0] < 0.2, "{shares:?}");
    assert!(shares[0] < shares[2] && shares[1] < shares[4], "{shares:?}");
    assert!(shares[4] > 0.25, "{shares:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reporting_high_load_draws_fewer_calls() {
    let _alone = measuring_shares().await;
    let cluster = Cluster::new().unwrap();
    let store = cluster.inventory_store().unwrap();
    let mut counts = HashMap::new();
    for (id, utilization) in [("busy", 0.9), ("idle", 0.1)] {
        let gauge = Arc::new(weft_mesh::LoadGauge::default());
        gauge.set(utilization);
        let count = Arc::new(AtomicU64::new(0));
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (addr, incoming) = mtls_listener(&store, &Default::default()).await.unwrap();
        tokio::spawn(
            Server::builder()
                .layer(weft_mesh::LoadReportLayer::new(gauge))
                .add_service(health)
                .add_service(InventoryServiceServer::new(Answering(count.clone())))
                .serve_with_incoming(incoming),
        );
        cluster.register(id, addr).await.unwrap();
        counts.insert(id, count);
    }
    let channel = cluster.channel(ClientOptions::default()).await.unwrap();
    wait_for_endpoints(&channel, 2).await.unwrap();
    let running = Arc::new(AtomicBool::new(true));
    // Two at a time: with four, calls in flight on the idle one would
    // outweigh the report (a cost at most fivefold) more often.
    let workers = get_stock_load(&Client::new(channel.clone()), 2, &running);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, failures) = finish(&running, workers).await.unwrap();
    assert_eq!(failures, 0, "every call answered");
    let (busy, idle) = (
        counts["busy"].load(Ordering::Relaxed),
        counts["idle"].load(Ordering::Relaxed),
    );
    eprintln!(
        "reporting 0.9 vs 0.1 utilization: {busy} vs {idle} calls (ratio {:.3})",
        busy as f64 / idle.max(1) as f64
    );
    assert!(idle > 100, "{idle}");
    assert!(busy * 2 < idle, "busy {busy}, idle {idle}");
}
