//! The endpoints of one service, kept in step with discovery, and the
//! power-of-two-choices pick over their peak-EWMA cost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weft_discovery::Snapshot;

use super::endpoint::{EndpointEvents, EndpointState, FailurePolicy};

/// Makes the connection to an address.
pub type Connect = Arc<dyn Fn(SocketAddr) -> Option<Channel> + Send + Sync>;

/// Each endpoint by id, with the task that watches its health.
type Watched = HashMap<String, (Arc<EndpointState>, JoinHandle<()>)>;

/// The live endpoints of one service.
pub struct Pool {
    endpoints: RwLock<Arc<[Arc<EndpointState>]>>,
    tasks: Mutex<Watched>,
    changed: Notify,
    events: PoolEvents,
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
            tasks: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            events,
        })
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
    /// [`EndpointState::last_resort`]).
    pub fn pick(&self, tried: &[String]) -> Option<Arc<EndpointState>> {
        let all = self.snapshot();
        let untried = |e: &EndpointState| !tried.contains(&e.id);
        // The first group with anyone in it: available and not yet tried,
        // available, then the draining ones (untried first). Counted and
        // indexed in place, so a pick allocates nothing.
        let groups: [&dyn Fn(&EndpointState) -> bool; 4] = [
            &|e| e.available() && untried(e),
            &|e| e.available(),
            &|e| e.last_resort() && untried(e),
            &|e| e.last_resort(),
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
                    return Some(if x.cost() <= y.cost() {
                        x.clone()
                    } else {
                        y.clone()
                    });
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
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            if let Some(e) = self.pick(tried) {
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
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
        let wanted: HashMap<&str, SocketAddr> = snapshot
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), e.addr))
            .collect();
        tasks.retain(|id, (state, task)| {
            let keep = wanted.get(id.as_str()) == Some(&state.addr);
            if !keep {
                task.abort();
                tracing::info!(%id, addr = %state.addr, "endpoint left discovery");
            }
            keep
        });
        for (id, addr) in wanted {
            if tasks.contains_key(id) {
                continue;
            }
            let channels: Vec<Channel> = (0..connections.max(1))
                .filter_map(|_| connect(addr))
                .collect();
            if channels.is_empty() {
                continue;
            }
            let state = Arc::new(
                EndpointState::new(id.to_owned(), addr, channels, policy)
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
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Arc::new(EndpointState::new(
            id.into(),
            ([127, 0, 0, 1], 9).into(),
            vec![channel],
            FailurePolicy::default(),
        ))
    }

    fn pool_of(endpoints: &[Arc<EndpointState>]) -> Arc<Pool> {
        let pool = Pool::new(PoolEvents::default());
        if let Ok(mut e) = pool.endpoints.write() {
            *e = Arc::from(endpoints.to_vec());
        }
        pool
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
}
