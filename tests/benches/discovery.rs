//! Discovery's figures, printed: Cloud Map calls per minute per process at
//! steady state (1 and 100 clients of one service, default periods, against
//! moto through the real SDK); time from registration to a watcher seeing
//! the instance (local backend and moto); heap bytes per 1,000 endpoints.
//! Run: `cargo bench -p weft-tests --bench discovery`.

// Bench code: a panic is a failed run with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use weft_discovery::cloudmap::{PollConfig, RegistrationMode};
use weft_discovery::{Discovery, Endpoint, Filter, Registration, Registry, Resolver, Snapshot};
use weft_tests::moto::Moto;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const NS: &str = "weft.bench";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        memory_per_thousand_endpoints();
        registration_to_visible_local().await;
        let moto = Moto::start().await.unwrap();
        let admin = moto
            .cloud_map(NS, RegistrationMode::SelfRegister, PollConfig::default())
            .await
            .unwrap();
        moto.create_namespace(admin.client(), NS, &["inventory"])
            .await
            .unwrap();
        for i in 0..3u8 {
            let r = Registration::new("inventory", format!("i-{i}"), ([10, 0, 0, i], 7001).into());
            admin.register(&r).await.unwrap();
        }
        registration_to_visible_moto(&moto, &admin).await;
        calls_per_minute(&moto).await;
    });
}

fn memory_per_thousand_endpoints() {
    let region = Region::new(GLOBAL);
    let snapshots: Vec<Snapshot> = (0..100)
        .map(|s| {
            let endpoints: Vec<Endpoint> = (0..1000u32)
                .map(|i| Endpoint {
                    id: format!("task-{s:03}-{i:05}-0123456789abcdef"),
                    addr: ([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7001).into(),
                    attributes: [("version", "1.4.2"), ("zone", "eu-west-1a")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    healthy: true,
                })
                .collect();
            Snapshot {
                endpoints: endpoints.into(),
                ..Snapshot::default()
            }
        })
        .collect();
    let stats = region.change();
    let net = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64;
    println!(
        "memory: {} bytes per 1,000 endpoints (36-char ids, version and zone attributes; 100 snapshots)",
        net / 100
    );
    drop(snapshots);
}

async fn registration_to_visible_local() {
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::from_setting(&format!("local://{}", dir.path().display()))
        .await
        .unwrap();
    let mut rx = d.watch("inventory", &Filter::any()).unwrap();
    rx.wait_for(|s| s.is_ready()).await.unwrap();
    let mut samples = Vec::new();
    for i in 0..20u16 {
        let started = Instant::now();
        d.register(&Registration::new(
            "inventory",
            format!("i-{i}"),
            ([127, 0, 0, 1], 7000 + i).into(),
        ))
        .await
        .unwrap();
        rx.wait_for(|s| s.endpoints.len() == usize::from(i) + 1)
            .await
            .unwrap();
        samples.push(started.elapsed());
        // Decorrelate from the poll phase.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..200))).await;
    }
    report("registration to visible, local (poll 200 ms)", &mut samples);
}

async fn registration_to_visible_moto(moto: &Moto, admin: &weft_discovery::cloudmap::CloudMap) {
    let watcher = moto
        .cloud_map(NS, RegistrationMode::SelfRegister, PollConfig::default())
        .await
        .unwrap();
    let mut rx = watcher.watch("inventory", &Filter::any()).unwrap();
    rx.wait_for(|s| s.endpoints.len() == 3).await.unwrap();
    let mut samples = Vec::new();
    for i in 0..8u8 {
        let started = Instant::now();
        admin
            .register(&Registration::new(
                "inventory",
                format!("new-{i}"),
                ([10, 0, 1, i], 7001).into(),
            ))
            .await
            .unwrap();
        rx.wait_for(|s| s.endpoints.iter().any(|e| e.id == format!("new-{i}")))
            .await
            .unwrap();
        samples.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5000))).await;
    }
    report(
        "registration to visible, Cloud Map on moto (revision check every 5 s ±20%)",
        &mut samples,
    );
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    println!(
        "{what}: p50 {p50:.2?}, max {max:.2?} over {} registrations",
        samples.len()
    );
}

async fn calls_per_minute(moto: &Moto) {
    // Two "processes": each CloudMap has its own SDK client, counters and
    // pollers. One has a single client of the service, the other a hundred.
    let one = moto
        .cloud_map(NS, RegistrationMode::SelfRegister, PollConfig::default())
        .await
        .unwrap();
    let hundred = moto
        .cloud_map(NS, RegistrationMode::SelfRegister, PollConfig::default())
        .await
        .unwrap();
    let _one_watch = one.watch("inventory", &Filter::any()).unwrap();
    let _watches: Vec<_> = (0..100)
        .map(|_| hundred.watch("inventory", &Filter::any()).unwrap())
        .collect();
    // Past the first full fetch, then a measured minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (one.counts().total(), hundred.counts().total());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let after = (one.counts().total(), hundred.counts().total());
    let per_min = |a: u64, b: u64| (b - a) as f64 / minutes;
    let (p1, p100) = (per_min(before.0, after.0), per_min(before.1, after.1));
    println!("Cloud Map calls per minute, 1 client: {p1:.1}");
    println!(
        "Cloud Map calls per minute, 100 clients: {p100:.1} (ratio to 1 client: {:.2})",
        p100 / p1.max(1.0)
    );
}
