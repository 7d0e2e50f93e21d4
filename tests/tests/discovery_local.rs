//! The local discovery backend against real files: register, resolve,
//! filter, health, deregister, crash expiry, change latency and concurrent
//! writers.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weft_discovery::{Discovery, Filter, Health, Registration, Registry, Resolver, Snapshot};
use weft_tests::wait::until;

async fn local(dir: &std::path::Path, ttl_ms: u64) -> Discovery {
    Discovery::from_setting(&format!(
        "local://{}?ttl_ms={ttl_ms}&poll_ms=100",
        dir.display()
    ))
    .await
    .unwrap()
}

fn instance(id: &str, port: u16, version: &str, zone: &str) -> Registration {
    Registration::new("inventory", id, ([127, 0, 0, 1], port).into())
        .with_attribute("version", version)
        .with_attribute("zone", zone)
}

fn ids(s: &Snapshot) -> BTreeSet<String> {
    s.endpoints.iter().map(|e| e.id.clone()).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn register_resolve_filter_health_and_deregister() {
    let dir = tempfile::tempdir().unwrap();
    let d = local(dir.path(), 3000).await;
    d.register(&instance("i-1", 7001, "1", "a")).await.unwrap();
    d.register(&instance("i-2", 7002, "1", "b")).await.unwrap();
    d.register(&instance("i-3", 7003, "2", "a")).await.unwrap();

    let mut all = d.watch("inventory", &Filter::any()).unwrap();
    let s = until(&mut all, "three", |s| s.endpoints.len() == 3).await;
    assert_eq!(s.endpoints[0].addr, ([127, 0, 0, 1], 7001).into());
    let mut v1b = d
        .watch(
            "inventory",
            &Filter::any().require("version", "1").prefer("zone", "b"),
        )
        .unwrap();
    assert_eq!(
        ids(&until(&mut v1b, "ready", |s| s.is_ready()).await),
        set(&["i-2"])
    );

    d.set_health("inventory", "i-2", Health::Unhealthy)
        .await
        .unwrap();
    until(&mut all, "i-2 unhealthy", |s| {
        ids(s) == set(&["i-1", "i-3"])
    })
    .await;
    // With no healthy instance in the filtered set, all of it is served.
    until(&mut v1b, "i-1 as fallback", |s| ids(s) == set(&["i-1"])).await;
    d.set_health("inventory", "i-2", Health::Healthy)
        .await
        .unwrap();
    until(&mut all, "i-2 back", |s| s.endpoints.len() == 3).await;

    d.deregister("inventory", "i-1").await.unwrap();
    until(&mut all, "i-1 gone", |s| ids(s) == set(&["i-2", "i-3"])).await;

    let err = d
        .register(&Registration::new(
            "inventory",
            "../escape",
            ([127, 0, 0, 1], 1).into(),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("instance id"), "{err}");
}

#[tokio::test]
async fn a_crashed_instance_expires_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let observer = local(dir.path(), 600).await;
    let survivor = local(dir.path(), 600).await;
    survivor
        .register(&instance("alive", 7001, "1", "a"))
        .await
        .unwrap();
    {
        let crashing = local(dir.path(), 600).await;
        crashing
            .register(&instance("doomed", 7002, "1", "a"))
            .await
            .unwrap();
        let mut rx = observer.watch("inventory", &Filter::any()).unwrap();
        until(&mut rx, "both", |s| s.endpoints.len() == 2).await;
        // Dropped without deregistering: heartbeats stop, as in a crash.
    }
    let mut rx = observer.watch("inventory", &Filter::any()).unwrap();
    let started = Instant::now();
    until(&mut rx, "doomed expired", |s| ids(s) == set(&["alive"])).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "expired after {took:?} with a 600 ms TTL"
    );
    // The survivor's heartbeats keep it served well past the TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ids(&rx.borrow()), set(&["alive"]));
}

#[tokio::test]
async fn a_registration_reaches_watchers_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let d = local(dir.path(), 3000).await;
    let mut rx = d.watch("inventory", &Filter::any()).unwrap();
    until(&mut rx, "ready", |s| s.is_ready()).await;
    for i in 0..5u16 {
        let started = Instant::now();
        d.register(&instance(&format!("i-{i}"), 7000 + i, "1", "a"))
            .await
            .unwrap();
        until(&mut rx, "the new instance", |s| {
            s.endpoints.len() == usize::from(i) + 1
        })
        .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let mut writers = Vec::new();
    for w in 0..20u16 {
        let path = dir.path().to_owned();
        writers.push(tokio::spawn(async move {
            let d = local(&path, 3000).await;
            for i in 0..10u16 {
                let n = w * 10 + i;
                d.register(&instance(&format!("w{w}-i{i}"), 7000 + n, "1", "a"))
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    d.set_health("inventory", &format!("w{w}-i{i}"), Health::Healthy)
                        .await
                        .unwrap();
                }
            }
            d
        }));
    }
    let mut registries = Vec::new();
    for w in writers {
        registries.push(w.await.unwrap());
    }
    let observer = local(dir.path(), 3000).await;
    let mut rx = observer.watch("inventory", &Filter::any()).unwrap();
    let s = until(&mut rx, "200 instances", |s| s.endpoints.len() == 200).await;
    assert_eq!(ids(&s).len(), 200);
    // No temporary files are left behind.
    let leftovers = std::fs::read_dir(dir.path().join("inventory"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}
