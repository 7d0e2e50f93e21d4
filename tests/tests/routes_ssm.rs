//! The route table in SSM Parameter Store, read through the real AWS SDK
//! from the moto server: applied at the start and within a poll of a
//! change, a malformed value refused with the table in use kept, a deleted
//! parameter meaning no routes, and an outage of the service keeping the
//! last good table.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use weft_mesh::{RoutePolling, Routes, SourceEvents};
use weft_service::routes::SsmParameter;
use weft_tests::moto::Moto;

const NAME: &str = "/weft/test/routes";

fn table(new_weight: u32) -> String {
    format!(
        "[services.orders]\nsplit = [{{ subset = {{ version = \"1.4\" }}, weight = {} }}, {{ subset = {{ version = \"1.5\" }}, weight = {new_weight} }}]\n",
        100 - new_weight
    )
}

fn weight_of_new(routes: &Routes) -> Option<u32> {
    routes.service("orders").and_then(|s| {
        s.split()
            .iter()
            .find(|(subset, _)| subset.to_string() == "version=1.5")
            .map(|(_, w)| *w)
    })
}

async fn wait_for(what: &str, within: Duration, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_table_in_ssm_is_followed_through_changes_and_outages() {
    let moto = Moto::start().await.unwrap();
    let client = moto.ssm();
    let put = |value: String| {
        let moto = &moto;
        async move { moto.put_parameter(NAME, &value).await.unwrap() }
    };
    put(table(5)).await;
    let poll = Duration::from_millis(300);
    let events = SourceEvents::default();
    let routes = Routes::follow(
        SsmParameter::with_client(NAME.into(), client.clone()),
        RoutePolling {
            every: poll,
            jitter: 0.0,
            error_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            ..RoutePolling::default()
        },
        events.clone(),
    )
    .await;
    assert_eq!(
        weight_of_new(&routes),
        Some(5),
        "read before the first call"
    );

    // `weft route set` writes through the same client code.
    SsmParameter::with_client(NAME.into(), client.clone())
        .put(&table(50))
        .await
        .unwrap();
    let took = wait_for("the change", poll * 3, || {
        weight_of_new(&routes) == Some(50)
    })
    .await;
    eprintln!("a change in SSM applied {took:?} after it was written (poll {poll:?})");

    // A malformed value: refused, the table kept.
    put("[services.orders]\nsplit = \"all of it\"".into()).await;
    wait_for("the refusal", poll * 3, || events.rejected.get() == 1).await;
    assert_eq!(weight_of_new(&routes), Some(50));
    assert_eq!(events.stale.get(), 1);

    // The service unreachable: the last good table stays.
    drop(moto);
    wait_for("a failed read", Duration::from_secs(10), || {
        events.fetch_errors.get() >= 1
    })
    .await;
    assert_eq!(weight_of_new(&routes), Some(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_parameter_means_no_routes() {
    let moto = Moto::start().await.unwrap();
    // Another parameter, so the emulator's SSM backend is loaded before the
    // bounded client's first read.
    moto.put_parameter("/weft/test/other", "x").await.unwrap();
    let client = moto.ssm();
    let events = SourceEvents::default();
    let routes = Routes::follow(
        SsmParameter::with_client(NAME.into(), client),
        RoutePolling::default(),
        events.clone(),
    )
    .await;
    assert_eq!(routes.current().services().len(), 0);
    assert_eq!(
        events.fetch_errors.get(),
        0,
        "a missing parameter is no error"
    );
}
