//! The poller's timing under a paused clock, against a scripted Cloud Map.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::api::DiscoverApi;
use super::poller::PollConfig;
use super::resolver::CloudMapResolver;
use crate::error::DiscoveryError;
use crate::traits::Resolver;
use crate::types::{Endpoint, Filter};

#[derive(Default)]
struct Script {
    endpoints: Vec<Endpoint>,
    revision: i64,
    fail_with: Option<DiscoveryError>,
    calls: Vec<(Duration, &'static str)>,
}

struct FakeApi {
    start: Instant,
    script: Mutex<Script>,
}

impl FakeApi {
    fn new(endpoints: Vec<Endpoint>) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            script: Mutex::new(Script {
                endpoints,
                revision: 1,
                ..Default::default()
            }),
        })
    }

    fn record(&self, kind: &'static str) -> Result<(), DiscoveryError> {
        let mut s = self.script.lock().unwrap();
        s.calls.push((self.start.elapsed(), kind));
        match &s.fail_with {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn calls(&self, kind: &str) -> Vec<u64> {
        let s = self.script.lock().unwrap();
        s.calls
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(t, _)| t.as_secs())
            .collect()
    }

    fn edit(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }
}

impl DiscoverApi for FakeApi {
    async fn revision(&self, _service: &str) -> Result<i64, DiscoveryError> {
        self.record("revision")?;
        Ok(self.script.lock().unwrap().revision)
    }

    async fn discover(
        &self,
        _service: &str,
        _filter: &Filter,
    ) -> Result<(Vec<Endpoint>, Option<i64>), DiscoveryError> {
        self.record("discover")?;
        let s = self.script.lock().unwrap();
        Ok((s.endpoints.clone(), Some(s.revision)))
    }
}

fn ep(id: &str, healthy: bool) -> Endpoint {
    Endpoint {
        id: id.into(),
        addr: ([10, 0, 0, 1], 7001).into(),
        attributes: Default::default(),
        healthy,
    }
}

fn no_jitter() -> PollConfig {
    PollConfig {
        jitter: 0.0,
        ..PollConfig::default()
    }
}

/// Sleeps to just after `secs` on the paused clock (poller steps land on
/// whole seconds; the extra millisecond lets them run first).
async fn at(start: Instant, secs: u64) {
    tokio::time::sleep_until(start + Duration::from_secs(secs) + Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn steady_state_is_a_revision_check_per_period_and_a_full_refresh_per_slower_period() {
    let api = FakeApi::new(vec![ep("a", true)]);
    let resolver = CloudMapResolver::new(api.clone(), no_jitter());
    let rx = resolver.watch("inventory", &Filter::any()).unwrap();
    at(api.start, 119).await;
    assert_eq!(api.calls("discover"), [0, 30, 60, 90]);
    assert_eq!(
        api.calls("revision").len(),
        24 - 4,
        "every 5 s except when a full refresh is due"
    );
    assert_eq!(rx.borrow().endpoints.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_revision_change_is_fetched_at_the_next_check() {
    let api = FakeApi::new(vec![ep("a", true)]);
    let resolver = CloudMapResolver::new(api.clone(), no_jitter());
    let mut rx = resolver.watch("inventory", &Filter::any()).unwrap();
    at(api.start, 7).await;
    rx.borrow_and_update();
    api.edit(|s| {
        s.endpoints.push(ep("b", true));
        s.revision = 2;
    });
    rx.changed().await.unwrap();
    assert_eq!(rx.borrow().endpoints.len(), 2);
    assert_eq!(
        api.start.elapsed().as_secs(),
        10,
        "seen at the revision check after the change"
    );
    // A revision that goes down is a change too.
    api.edit(|s| {
        s.endpoints.pop();
        s.revision = 1;
    });
    rx.changed().await.unwrap();
    assert_eq!(rx.borrow().endpoints.len(), 1);
    assert_eq!(api.start.elapsed().as_secs(), 15);
}

#[tokio::test(start_paused = true)]
async fn a_health_flip_without_a_revision_change_shows_at_the_full_refresh() {
    let api = FakeApi::new(vec![ep("a", true), ep("b", true)]);
    let resolver = CloudMapResolver::new(api.clone(), no_jitter());
    let mut rx = resolver.watch("inventory", &Filter::any()).unwrap();
    at(api.start, 1).await;
    rx.borrow_and_update();
    api.edit(|s| s.endpoints[1].healthy = false);
    rx.changed().await.unwrap();
    assert_eq!(api.start.elapsed().as_secs(), 30);
    assert!(!rx.borrow().endpoints[1].healthy);
}

#[tokio::test(start_paused = true)]
async fn errors_keep_the_last_known_endpoints_and_back_off() {
    let api = FakeApi::new(vec![ep("a", true), ep("b", true)]);
    let resolver = CloudMapResolver::new(api.clone(), no_jitter());
    let rx = resolver.watch("inventory", &Filter::any()).unwrap();
    at(api.start, 1).await;
    api.edit(|s| s.fail_with = Some(DiscoveryError::Backend("connection refused".into())));
    at(api.start, 60).await;
    {
        let snapshot = rx.borrow();
        assert_eq!(
            snapshot.endpoints.len(),
            2,
            "last known good endpoints are kept"
        );
        assert!(
            snapshot
                .last_error
                .as_deref()
                .unwrap()
                .contains("connection refused")
        );
        let staleness = snapshot.staleness().unwrap();
        assert!(staleness >= Duration::from_secs(55), "{staleness:?}");
    }
    let revisions = api.calls("revision");
    let discovers = api.calls("discover");
    // The first failure is a revision check at 5 s; then full fetches after
    // 1, 2, 4, 8, 16 s: a quick retry, then growing, never hammering.
    assert_eq!(revisions, [5]);
    assert_eq!(discovers, [0, 6, 8, 12, 20, 36]);

    api.edit(|s| s.fail_with = None);
    let mut rx = rx;
    let recovered = rx
        .wait_for(|s| s.last_error.is_none())
        .await
        .unwrap()
        .clone();
    assert_eq!(
        api.start.elapsed().as_secs(),
        68,
        "the next backoff step (36 + 32)"
    );
    assert!(recovered.staleness().unwrap() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_exponentially_from_a_longer_base() {
    let api = FakeApi::new(vec![ep("a", true)]);
    let resolver = CloudMapResolver::new(api.clone(), no_jitter());
    let _rx = resolver.watch("inventory", &Filter::any()).unwrap();
    at(api.start, 1).await;
    api.edit(|s| s.fail_with = Some(DiscoveryError::Throttled("RequestLimitExceeded".into())));
    at(api.start, 400).await;
    let mut times: Vec<u64> = api.calls("revision");
    times.extend(api.calls("discover").into_iter().filter(|t| *t > 0));
    times.sort();
    // 5 (fails), then +5, +10, +20, +40, +80, +120 (capped), +120.
    assert_eq!(times, [5, 10, 20, 40, 80, 160, 280, 400]);
}

#[tokio::test(start_paused = true)]
async fn one_poller_per_service_shared_by_all_watchers_and_stopped_after_the_last() {
    let api = FakeApi::new(vec![ep("a", true)]);
    let resolver = CloudMapResolver::new(api.clone(), no_jitter());
    let watchers: Vec<_> = (0..100)
        .map(|_| resolver.watch("inventory", &Filter::any()).unwrap())
        .collect();
    assert_eq!(resolver.active_pollers(), 1);
    at(api.start, 59).await;
    assert_eq!(
        api.calls("discover").len() + api.calls("revision").len(),
        12,
        "as for one watcher"
    );
    drop(watchers);
    let before = api.calls("revision").len();
    at(api.start, 120).await;
    assert!(
        api.calls("revision").len() <= before + 1,
        "the poller stops"
    );
    assert_eq!(resolver.active_pollers(), 0);
    // A filtered watch is a poller of its own.
    let _v1 = resolver
        .watch("inventory", &Filter::any().require("version", "1"))
        .unwrap();
    let _all = resolver.watch("inventory", &Filter::any()).unwrap();
    assert_eq!(resolver.active_pollers(), 2);
}
