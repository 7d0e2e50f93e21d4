//! The endpoints of one service, kept in step with discovery, and the
//! power-of-two-choices pick over their peak-EWMA cost, tempered by slow
//! start; a new endpoint's estimate starts from its peers' average.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::conn::Conn;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weft_discovery::Snapshot;

use super::endpoint::{EndpointEvents, EndpointState, FailurePolicy};
use super::routes::Subset;

/// Makes the connection to an address.
pub type Connect = Arc<dyn Fn(SocketAddr) -> Option<Conn> + Send + Sync>;

/// Each endpoint by id, with the task that watches its health.
type Watched = HashMap<String, (Arc<EndpointState>, JoinHandle<()>)>;

/// The live endpoints of one service.
pub struct Pool {
    endpoints: RwLock<Arc<[Arc<EndpointState>]>>,
    /// The client's own zone, which picks prefer (set once, at the start).
    locality: std::sync::OnceLock<Locality>,
    tasks: Mutex<Watched>,
    changed: Notify,
    events: PoolEvents,
}

/// Where the client runs, for zone-aware picks: calls stay in `zone` while
/// it holds at least `min_share` of the available endpoints (of the call's
/// subset), and spill to every zone otherwise.
#[derive(Debug, Clone)]
pub struct Locality {
    /// The client's Availability Zone (the `zone` attribute endpoints
    /// register with).
    pub zone: String,
    /// The least share of the available endpoints the zone must hold for
    /// calls to stay in it.
    pub min_share: f64,
}

/// Counters a pool bumps for the metrics of its upstream.
#[derive(Debug, Clone, Default)]
pub struct PoolEvents {
    /// Given to each endpoint.
    pub endpoint: EndpointEvents,
    /// Discovery errors seen in the snapshots followed.
    pub discovery_errors: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.snapshot().len())
            .finish()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for (_, task) in tasks.values() {
                task.abort();
            }
        }
    }
}

impl Pool {
    fn new(events: PoolEvents) -> Arc<Self> {
        Arc::new(Self {
            endpoints: RwLock::new(Arc::from(Vec::new())),
            locality: std::sync::OnceLock::new(),
            tasks: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            events,
        })
    }

    /// A pool of `endpoints`, fixed (no discovery behind it): for
    /// benchmarks of the pick and for tests.
    pub fn of(endpoints: Vec<Arc<EndpointState>>) -> Arc<Self> {
        let pool = Self::new(PoolEvents::default());
        if let Ok(mut e) = pool.endpoints.write() {
            *e = Arc::from(endpoints);
        }
        pool
    }

    /// Every endpoint discovery lists, available or not.
    pub fn snapshot(&self) -> Arc<[Arc<EndpointState>]> {
        match self.endpoints.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Picks the cheaper of two random available endpoints, preferring ones
    /// not in `tried` (a retry goes elsewhere when it can). With none
    /// available, picks among the draining ones (see
    /// [`EndpointState::last_resort`]). An endpoint in slow start that
    /// would win keeps the pick only in proportion to its weight against
    /// the other's ([`EndpointState::weight`]), so its share grows over
    /// the window instead of jumping to full at once.
    pub fn pick(&self, tried: &[String]) -> Option<Arc<EndpointState>> {
        self.pick_in(tried, None)
    }

    /// Like [`Pool::pick`], among the endpoints of `subset` only (all of
    /// them for `None`).
    pub fn pick_in(&self, tried: &[String], subset: Option<&Subset>) -> Option<Arc<EndpointState>> {
        let all = self.snapshot();
        let member = |e: &EndpointState| subset.is_none_or(|s| s.contains(&e.attributes));
        let untried = |e: &EndpointState| member(e) && !tried.contains(&e.id);
        // Zone-aware: the own zone alone while it holds enough of the
        // available endpoints.
        let zone = self.locality.get().and_then(|l| {
            let in_zone = |e: &EndpointState| e.zone() == Some(l.zone.as_str());
            let (mut local, mut available) = (0usize, 0usize);
            for e in all.iter().filter(|e| e.available() && member(e)) {
                available += 1;
                local += usize::from(in_zone(e));
            }
            (local > 0 && local as f64 >= l.min_share * available as f64).then_some(l.zone.as_str())
        });
        let local = |e: &EndpointState| zone.is_none_or(|z| e.zone() == Some(z));
        // The first group with anyone in it: available, in the zone and not
        // yet tried; available and not yet tried (a retry may leave the
        // zone); available in the zone; available; then the draining ones
        // (untried first). Counted and indexed in place, so a pick
        // allocates nothing.
        let groups: [&dyn Fn(&EndpointState) -> bool; 6] = [
            &|e| e.available() && untried(e) && local(e),
            &|e| e.available() && untried(e),
            &|e| e.available() && member(e) && local(e),
            &|e| e.available() && member(e),
            &|e| e.last_resort() && untried(e),
            &|e| e.last_resort() && member(e),
        ];
        for in_group in groups {
            let nth = |i: usize| all.iter().filter(|e| in_group(e)).nth(i);
            match all.iter().filter(|e| in_group(e)).count() {
                0 => continue,
                1 => return nth(0).cloned(),
                n => {
                    let a = fastrand::usize(..n);
                    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                    let (x, y) = (nth(a)?, nth(b)?);
                    let (winner, other) = if x.cost() <= y.cost() { (x, y) } else { (y, x) };
                    let (won, against) = (winner.weight(), other.weight());
                    if won < against && fastrand::f64() * against >= won {
                        return Some(other.clone());
                    }
                    return Some(winner.clone());
                }
            }
        }
        None
    }

    /// Like [`Pool::pick`], waiting up to `within` for an endpoint to become
    /// available (at start, or while every endpoint is out).
    pub async fn pick_within(
        &self,
        tried: &[String],
        within: Duration,
    ) -> Option<Arc<EndpointState>> {
        self.pick_within_in(tried, None, within).await
    }

    /// Like [`Pool::pick_within`], among the endpoints of `subset` only.
    pub async fn pick_within_in(
        &self,
        tried: &[String],
        subset: Option<&Subset>,
        within: Duration,
    ) -> Option<Arc<EndpointState>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            if let Some(e) = self.pick_in(tried, subset) {
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Makes picks prefer `locality`'s zone (once; later calls change
    /// nothing).
    pub fn set_locality(&self, locality: Locality) {
        let _ = self.locality.set(locality);
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    fn apply(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        connect: &Connect,
        policy: FailurePolicy,
        connections: usize,
    ) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        let wanted: HashMap<&str, (SocketAddr, &BTreeMap<String, String>)> = snapshot
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), (e.addr, &e.attributes)))
            .collect();
        // An endpoint whose address or attributes changed is a new one:
        // routes choose endpoints by their attributes.
        tasks.retain(|id, (state, task)| {
            let keep = wanted.get(id.as_str()) == Some(&(state.addr, &state.attributes));
            if !keep {
                task.abort();
                tracing::info!(%id, addr = %state.addr, "endpoint left discovery");
            }
            keep
        });
        // A new endpoint's latency estimate starts at the average of those
        // measured: a fixed guess would make it far cheaper or dearer than
        // its peers until its first answers.
        let measured: Vec<Duration> = tasks
            .values()
            .filter_map(|(state, _)| state.measured_latency())
            .collect();
        let seed = match u32::try_from(measured.len()) {
            Ok(n) if n > 0 => Some(measured.iter().sum::<Duration>() / n),
            _ => None,
        };
        for (id, (addr, attributes)) in wanted {
            if tasks.contains_key(id) {
                continue;
            }
            let channels: Vec<Conn> = (0..connections.max(1))
                .filter_map(|_| connect(addr))
                .collect();
            if channels.is_empty() {
                continue;
            }
            let state = Arc::new(
                EndpointState::new(id.to_owned(), addr, channels, policy)
                    .seeded(seed)
                    .with_attributes(attributes.clone())
                    .counting(self.events.endpoint.clone()),
            );
            let task = tokio::spawn(watch_health(state.clone(), Arc::downgrade(self)));
            tasks.insert(id.to_owned(), (state, task));
        }
        let list: Vec<Arc<EndpointState>> = tasks.values().map(|(s, _)| s.clone()).collect();
        if let Ok(mut e) = self.endpoints.write() {
            *e = Arc::from(list);
        }
        drop(tasks);
        self.notify();
    }
}

/// Follows discovery for as long as the pool lives.
pub fn follow(
    mut rx: watch::Receiver<Snapshot>,
    connect: Connect,
    policy: FailurePolicy,
    connections: usize,
    events: PoolEvents,
) -> (Arc<Pool>, JoinHandle<()>) {
    let pool = Pool::new(events);
    let weak = Arc::downgrade(&pool);
    let task = tokio::spawn(async move {
        let mut last_error: Option<Arc<str>> = None;
        loop {
            let snapshot = rx.borrow_and_update().clone();
            let Some(pool) = weak.upgrade() else { return };
            // Each failed attempt leaves a new error behind.
            let new_error = match (&snapshot.last_error, &last_error) {
                (Some(now), Some(before)) => !Arc::ptr_eq(now, before),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if new_error {
                pool.events.discovery_errors.inc();
            }
            last_error = snapshot.last_error.clone();
            pool.apply(&snapshot, &connect, policy, connections);
            drop(pool);
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    (pool, task)
}

/// Watches an endpoint's grpc.health.v1 over its own connection: NOT_SERVING
/// takes it out of the pool within one round trip (discovery may take 30 s),
/// and a broken stream means the connection failed: out at once, then
/// reconnect attempts with backoff until it serves again.
async fn watch_health(state: Arc<EndpointState>, pool: std::sync::Weak<Pool>) {
    let notify = |pool: &std::sync::Weak<Pool>| {
        if let Some(p) = pool.upgrade() {
            p.notify();
        }
    };
    loop {
        let Some(channel) = state.primary() else {
            return;
        };
        let mut client = HealthClient::new(channel);
        match client.watch(HealthCheckRequest::default()).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Ok(Some(update)) = stream.message().await {
                    state.health_reported(update.status() == ServingStatus::Serving);
                    notify(&pool);
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                // No health service: its connection state is all we know.
                state.set_serving(true);
                notify(&pool);
                return;
            }
            Err(_) => {}
        }
        let delay = state.connection_failed();
        notify(&pool);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::endpoint::FailurePolicy;

    fn endpoint(id: &str) -> Arc<EndpointState> {
        let channel = Conn::plaintext(([127, 0, 0, 1], 9).into()).unwrap();
        Arc::new(EndpointState::new(
            id.into(),
            ([127, 0, 0, 1], 9).into(),
            vec![channel],
            FailurePolicy::default(),
        ))
    }

    fn pool_of(endpoints: &[Arc<EndpointState>]) -> Arc<Pool> {
        Pool::of(endpoints.to_vec())
    }

    /// An endpoint that answered its calls in `latency`.
    async fn answered_in(e: &EndpointState, latency: Duration) {
        for _ in 0..3 {
            let call = e.start();
            tokio::time::advance(latency).await;
            call.responded();
        }
    }

    fn shares(pool: &Pool, picks: usize, tried: &[String]) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..picks {
            if let Some(e) = pool.pick(tried) {
                *seen.entry(e.id.clone()).or_default() += 1;
            }
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn the_slow_endpoint_loses_every_comparison_and_a_retry_goes_elsewhere() {
        let (a, b, slow) = (endpoint("a"), endpoint("b"), endpoint("slow"));
        for e in [&a, &b, &slow] {
            e.health_reported(true);
        }
        // The fast ones answer near the starting estimate (lower values
        // come in slowly, a peak at once).
        answered_in(&a, Duration::from_millis(4)).await;
        answered_in(&b, Duration::from_millis(4)).await;
        answered_in(&slow, Duration::from_millis(80)).await;
        let pool = pool_of(&[a.clone(), b.clone(), slow.clone()]);
        // Two distinct candidates each time: the slow one always meets a
        // faster one.
        let seen = shares(&pool, 1000, &[]);
        assert_eq!(seen.get("slow"), None, "{seen:?}");
        assert!(
            seen.get("a") > Some(&200) && seen.get("b") > Some(&200),
            "{seen:?}"
        );
        // A retry avoids what it tried while anything else is available.
        let seen = shares(&pool, 200, &["a".to_owned(), "b".to_owned()]);
        assert_eq!(seen.get("slow"), Some(&200), "{seen:?}");
        // Load counts: calls in flight on the fast endpoints make the slow
        // one the cheaper.
        let _busy: Vec<_> = (0..50).map(|_| (a.start(), b.start())).collect();
        let seen = shares(&pool, 300, &[]);
        assert!(seen.get("slow").copied().unwrap_or(0) > 100, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_or_not_serving_endpoint_leaves_the_picks_and_comes_back() {
        let (a, b) = (endpoint("a"), endpoint("b"));
        a.health_reported(true);
        b.health_reported(true);
        let pool = pool_of(&[a.clone(), b.clone()]);
        for _ in 0..FailurePolicy::default().consecutive_failures {
            a.call_failed();
        }
        assert_eq!(shares(&pool, 100, &[]).get("b"), Some(&100), "a is ejected");
        tokio::time::advance(FailurePolicy::default().base_ejection + Duration::from_secs(1)).await;
        assert!(shares(&pool, 100, &[]).contains_key("a"), "a is back");
        b.health_reported(false);
        assert_eq!(
            shares(&pool, 100, &[]).get("a"),
            Some(&100),
            "b said NOT_SERVING"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_pick_takes_the_first_endpoint_to_become_available() {
        let a = endpoint("a");
        let pool = pool_of(std::slice::from_ref(&a));
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.pick_within(&[], Duration::from_secs(5)).await })
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        a.health_reported(true);
        pool.notify();
        let picked = waiting.await.ok().flatten().map(|e| e.id.clone());
        assert_eq!(picked, Some("a".into()));
        let none = pool_of(&[]);
        assert!(
            none.pick_within(&[], Duration::from_secs(2))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn draining_endpoints_are_picked_only_when_none_is_available() {
        let (old, new) = (endpoint("old"), endpoint("new"));
        let pool = pool_of(&[old.clone(), new.clone()]);
        assert!(pool.pick(&[]).is_none(), "neither has reported its health");
        // The old one drains before the new one is known to serve: it still
        // answers, so it is picked rather than failing the call.
        old.health_reported(false);
        assert_eq!(pool.pick(&[]).map(|e| e.id.clone()), Some("old".into()));
        new.health_reported(true);
        for _ in 0..20 {
            assert_eq!(pool.pick(&[]).map(|e| e.id.clone()), Some("new".into()));
        }
        new.connection_failed();
        old.connection_failed();
        assert!(pool.pick(&[]).is_none(), "nothing answers");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_started_endpoint_s_share_grows_over_its_window() {
        let (old, new) = (endpoint("old"), endpoint("new"));
        old.health_reported(true);
        tokio::time::advance(Duration::from_secs(60)).await;
        new.health_reported(true);
        let pool = pool_of(&[old.clone(), new.clone()]);
        // Equal estimates: without slow start each would take half.
        let window = FailurePolicy::default().slow_start;
        let mut last = 0.0;
        let mut seen_shares = Vec::new();
        // Every fifth of the window: served 0, 2/10, 4/10, 6/10, 8/10 of it.
        for tenth in [1u32, 3, 5, 7, 9] {
            let share = shares(&pool, 4000, &[]).get("new").copied().unwrap_or(0) as f64 / 4000.0;
            seen_shares.push(share);
            // Its weight is the time served over the window (at least 0.1),
            // and its full share is one half.
            let weight = (f64::from(tenth - 1) / 10.0).max(0.1);
            assert!(
                (share - weight / 2.0).abs() < 0.04,
                "share {share:.3} at {}/10 of the window, weight {weight}",
                tenth - 1
            );
            assert!(share >= last - 0.02, "shares {seen_shares:?}");
            last = share;
            tokio::time::advance(window / 5).await;
        }
        tokio::time::advance(window).await;
        let share = shares(&pool, 4000, &[]).get("new").copied().unwrap_or(0) as f64 / 4000.0;
        assert!(
            (share - 0.5).abs() < 0.04,
            "full share after the window: {share}"
        );
        // Back from an ejection, it ramps again.
        for _ in 0..FailurePolicy::default().consecutive_failures {
            new.call_failed();
        }
        tokio::time::advance(FailurePolicy::default().base_ejection).await;
        assert!(new.weight() <= 0.1 + f64::EPSILON, "{}", new.weight());
        tokio::time::advance(window / 2).await;
        assert!((new.weight() - 0.5).abs() < 0.01, "{}", new.weight());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_s_estimate_starts_at_its_measured_peers_average() {
        let pool = Pool::new(PoolEvents::default());
        let connect: Connect =
            Arc::new(|_| Some(Conn::plaintext(([127, 0, 0, 1], 9).into()).unwrap()));
        let listing = |ids: &[&str]| Snapshot {
            endpoints: ids
                .iter()
                .enumerate()
                .map(|(n, id)| weft_discovery::Endpoint {
                    id: (*id).into(),
                    addr: ([127, 0, 0, 1], 9000 + n as u16).into(),
                    attributes: Default::default(),
                    healthy: true,
                })
                .collect(),
            fetched_at: None,
            last_error: None,
        };
        pool.apply(&listing(&["a", "b"]), &connect, FailurePolicy::default(), 1);
        let by_id = |id: &str| pool.snapshot().iter().find(|e| e.id == id).cloned();
        let (a, b) = (by_id("a").unwrap(), by_id("b").unwrap());
        assert_eq!(a.measured_latency(), None, "nothing measured yet");
        // Peaks count at once: 40 ms and 80 ms.
        answered_in(&a, Duration::from_millis(40)).await;
        answered_in(&b, Duration::from_millis(80)).await;
        let (la, lb) = (a.measured_latency().unwrap(), b.measured_latency().unwrap());
        pool.apply(
            &listing(&["a", "b", "c"]),
            &connect,
            FailurePolicy::default(),
            1,
        );
        let c = by_id("c").unwrap();
        c.health_reported(true);
        assert!(
            c.measured_latency().is_none(),
            "a seed is not a measurement"
        );
        // Its cost is the peers' average, not the 5 ms default that would
        // make it look sixteen times cheaper than them.
        let expected = ((la + lb) / 2).as_nanos() as f64;
        assert!(
            (c.cost() - expected).abs() < expected * 0.01,
            "{} vs {expected}",
            c.cost()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_stay_in_the_zone_while_it_has_enough_and_spill_when_it_has_not() {
        let zoned = |id: &str, zone: &str| {
            let channel = Conn::plaintext(([127, 0, 0, 1], 9).into()).unwrap();
            let e = Arc::new(
                EndpointState::new(
                    id.into(),
                    ([127, 0, 0, 1], 9).into(),
                    vec![channel],
                    FailurePolicy::default(),
                )
                .with_attributes([("zone".to_owned(), zone.to_owned())].into()),
            );
            e.health_reported(true);
            e
        };
        let (a1, a2, b1, b2) = (
            zoned("a1", "a"),
            zoned("a2", "a"),
            zoned("b1", "b"),
            zoned("b2", "b"),
        );
        let pool = pool_of(&[a1.clone(), a2.clone(), b1.clone(), b2.clone()]);
        pool.set_locality(Locality {
            zone: "a".into(),
            min_share: 0.4,
        });
        let seen = shares(&pool, 1000, &[]);
        assert_eq!(
            seen.get("a1").unwrap_or(&0) + seen.get("a2").unwrap_or(&0),
            1000,
            "{seen:?}"
        );
        // A retry leaves the zone once the zone's endpoints were tried.
        let seen = shares(&pool, 100, &["a1".to_owned(), "a2".to_owned()]);
        assert_eq!(
            seen.get("b1").unwrap_or(&0) + seen.get("b2").unwrap_or(&0),
            100,
            "{seen:?}"
        );
        // One of three available (33%) is below the 40% the zone must
        // hold: spill.
        a2.health_reported(false);
        let seen = shares(&pool, 1000, &[]);
        assert!(
            seen.get("b1").unwrap_or(&0) + seen.get("b2").unwrap_or(&0) > 500,
            "{seen:?}"
        );
        // None left in the zone: everything elsewhere.
        a1.health_reported(false);
        let seen = shares(&pool, 100, &[]);
        assert_eq!(
            seen.get("b1").unwrap_or(&0) + seen.get("b2").unwrap_or(&0),
            100,
            "{seen:?}"
        );
    }
}
