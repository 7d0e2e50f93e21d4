//! Cloud Map discovery through the real AWS SDK against the moto server:
//! register, resolve, filter, health, deregister, 1,000 instances, and an
//! emulator outage.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use weft_discovery::cloudmap::{CloudMap, PollConfig, RegistrationMode};
use weft_discovery::{Filter, Health, Registration, Registry, Resolver, Snapshot};
use weft_tests::moto::Moto;
use weft_tests::wait::until;

const NS: &str = "weft.test";

fn fast_poll() -> PollConfig {
    PollConfig {
        revision_period: Duration::from_millis(100),
        full_refresh_period: Duration::from_millis(500),
        error_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..PollConfig::default()
    }
}

async fn setup(moto: &Moto, mode: RegistrationMode) -> CloudMap {
    let cloud_map = moto.cloud_map(NS, mode, fast_poll()).await.unwrap();
    moto.create_namespace(cloud_map.client(), NS, &["inventory", "payments"])
        .await
        .unwrap();
    cloud_map
}

fn instance(id: &str, port: u16, version: &str, zone: &str) -> Registration {
    Registration::new("inventory", id, ([127, 0, 0, 1], port).into())
        .with_attribute("version", version)
        .with_attribute("zone", zone)
}

fn ids(s: &Snapshot) -> BTreeSet<String> {
    s.endpoints.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_resolve_filter_health_and_deregister() {
    let moto = Moto::start().await.unwrap();
    let cm = setup(&moto, RegistrationMode::SelfRegister).await;
    cm.register(&instance("i-1", 7001, "1", "a")).await.unwrap();
    cm.register(&instance("i-2", 7002, "1", "b")).await.unwrap();
    cm.register(&instance("i-3", 7003, "2", "a")).await.unwrap();

    // The namespace's services, as `weft ls` lists them with no names.
    assert_eq!(
        cm.registry().service_names().await.unwrap(),
        ["inventory", "payments"]
    );

    let mut all = cm.watch("inventory", &Filter::any()).unwrap();
    let snapshot = until(&mut all, "three instances", |s| s.endpoints.len() == 3).await;
    let first = snapshot.endpoints.iter().find(|e| e.id == "i-1").unwrap();
    assert_eq!(first.addr, ([127, 0, 0, 1], 7001).into());
    assert_eq!(
        first.attributes.get("version").map(String::as_str),
        Some("1")
    );
    assert!(
        !first.attributes.contains_key("AWS_INSTANCE_PORT"),
        "AWS_ attributes are not user attributes"
    );

    // Hard filter: version 1 only.
    let mut v1 = cm
        .watch("inventory", &Filter::any().require("version", "1"))
        .unwrap();
    let s = until(&mut v1, "version 1", |s| s.is_ready()).await;
    assert_eq!(ids(&s), ["i-1", "i-2"].map(String::from).into());
    // Soft filter: zone b preferred among version 1.
    let mut v1b = cm
        .watch(
            "inventory",
            &Filter::any().require("version", "1").prefer("zone", "b"),
        )
        .unwrap();
    let s = until(&mut v1b, "version 1 in zone b", |s| s.is_ready()).await;
    assert_eq!(ids(&s), ["i-2"].map(String::from).into());
    // A zone nobody is in is ignored rather than emptying the set.
    let mut v1z = cm
        .watch(
            "inventory",
            &Filter::any()
                .require("version", "1")
                .prefer("zone", "nowhere"),
        )
        .unwrap();
    let s = until(&mut v1z, "version 1 anywhere", |s| s.is_ready()).await;
    assert_eq!(s.endpoints.len(), 2);

    // Health: an unhealthy instance leaves the healthy set at the next full
    // refresh (the revision does not move on health changes).
    cm.set_health("inventory", "i-2", Health::Unhealthy)
        .await
        .unwrap();
    until(&mut all, "i-2 unhealthy", |s| {
        !ids(s).contains("i-2") && s.endpoints.len() == 2
    })
    .await;
    cm.set_health("inventory", "i-2", Health::Healthy)
        .await
        .unwrap();
    until(&mut all, "i-2 back", |s| ids(s).contains("i-2")).await;

    cm.deregister("inventory", "i-1").await.unwrap();
    until(&mut all, "i-1 gone", |s| !ids(s).contains("i-1")).await;
    assert!(all.borrow().last_error.is_none());

    // Another service in the namespace is separate.
    let payments = cm.watch("payments", &Filter::any()).unwrap();
    let mut payments = payments;
    let s = until(&mut payments, "payments resolved", |s| s.is_ready()).await;
    assert!(s.endpoints.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_registrations_fail_before_any_call() {
    let moto = Moto::start().await.unwrap();
    let cm = setup(&moto, RegistrationMode::SelfRegister).await;
    let before = cm.counts().total();
    let mut crowded = instance("i-1", 7001, "1", "a");
    for i in 0..27 {
        crowded = crowded.with_attribute(format!("k{i}"), "v");
    }
    let err = cm.register(&crowded).await.unwrap_err();
    assert!(err.to_string().contains("allows 30"), "{err}");
    assert_eq!(cm.counts().total(), before, "no call was made");
    let err = cm
        .register(&Registration::new(
            "nope",
            "i-1",
            ([127, 0, 0, 1], 1).into(),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn externally_registered_instances_only_report_health() {
    let moto = Moto::start().await.unwrap();
    let platform = setup(&moto, RegistrationMode::SelfRegister).await;
    // The platform (ECS) registers the task.
    platform
        .register(&instance("task-1", 7001, "1", "a"))
        .await
        .unwrap();
    platform
        .register(&instance("task-2", 7002, "1", "a"))
        .await
        .unwrap();

    let cm = moto
        .cloud_map(NS, RegistrationMode::External, fast_poll())
        .await
        .unwrap();
    // Registering in external mode is a no-op: no third instance appears.
    cm.register(&instance("task-3", 7003, "1", "a"))
        .await
        .unwrap();
    cm.set_health("inventory", "task-1", Health::Unhealthy)
        .await
        .unwrap();
    let mut rx = cm.watch("inventory", &Filter::any()).unwrap();
    let s = until(&mut rx, "only task-2 healthy", |s| {
        ids(s) == ["task-2"].map(String::from).into()
    })
    .await;
    assert_eq!(s.endpoints.len(), 1);
    // Deregistering is the platform's job too.
    cm.deregister("inventory", "task-2").await.unwrap();
    assert_eq!(
        platform
            .registry()
            .list_instances("inventory")
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_resolve_and_list_completely() {
    let moto = Moto::start().await.unwrap();
    let cm = setup(&moto, RegistrationMode::SelfRegister).await;
    let mut tasks = Vec::new();
    for batch in 0..20u16 {
        let cm = cm.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u16 {
                let n = batch * 50 + i;
                let registration = Registration::new(
                    "inventory",
                    format!("i-{n:04}"),
                    ([10, 0, (n / 250) as u8, (n % 250) as u8], 7000).into(),
                );
                cm.register(&registration).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut rx = cm.watch("inventory", &Filter::any()).unwrap();
    let s = until(&mut rx, "1,000 endpoints", |s| s.endpoints.len() == 1000).await;
    assert_eq!(ids(&s).len(), 1000, "distinct ids");
    let listed = cm.registry().list_instances("inventory").await.unwrap();
    assert_eq!(
        listed.len(),
        1000,
        "ListInstances pages through all of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulator_outage_leaves_clients_with_their_last_endpoints() {
    let mut moto = Moto::start().await.unwrap();
    let cm = setup(&moto, RegistrationMode::SelfRegister).await;
    cm.register(&instance("i-1", 7001, "1", "a")).await.unwrap();
    cm.register(&instance("i-2", 7002, "1", "a")).await.unwrap();
    let mut rx = cm.watch("inventory", &Filter::any()).unwrap();
    until(&mut rx, "two endpoints", |s| s.endpoints.len() == 2).await;

    moto.stop();
    let s = until(&mut rx, "an error", |s| s.last_error.is_some()).await;
    assert_eq!(s.endpoints.len(), 2, "the last known good endpoints stay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = rx.borrow().clone();
    assert_eq!(s.endpoints.len(), 2);
    assert!(
        s.staleness().unwrap() >= Duration::from_secs(2),
        "staleness is visible: {:?}",
        s.staleness()
    );
    assert!(cm.counts().discover.load(Ordering::Relaxed) >= 1);
}
