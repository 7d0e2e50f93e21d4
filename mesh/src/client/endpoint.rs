//! One endpoint of a service as the client sees it: its HTTP/2 connection,
//! its peak-EWMA latency and in-flight count (the load the balancer compares),
//! whether it may be picked (health, connection state, ejection), and its
//! weight while it ramps up after joining or returning (slow start).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::conn::Conn;
use tokio::time::Instant;
use weft_discovery::backoff::Backoff;

/// How fast the latency estimate forgets: the decay time constant.
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed before the first response when no peer has been
/// measured either, and the value an unused estimate drifts back to.
const DEFAULT_RTT: Duration = Duration::from_millis(5);
/// How long a server's load report counts: an endpoint that stopped
/// reporting (or stopped being called) is judged by latency alone again.
const LOAD_FRESH: Duration = Duration::from_secs(10);
/// The highest utilization the pick believes: the report weighs the cost
/// at most fivefold, so it tilts the pick without drowning what latency and
/// the overload penalty say (at 1 the cost would be infinite and the
/// endpoint never tried again).
const MOST_LOAD: f64 = 0.8;

/// The least weight of an endpoint in slow start: even at its first instant
/// it takes some calls, so its estimate is measured.
const MIN_WEIGHT: f64 = 0.1;

/// When an endpoint fails, how long it stays out, and how it comes back.
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    /// Consecutive failed calls that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further ejection adds as much.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// How long a new or returning endpoint (just serving, or back from an
    /// ejection) takes to reach its full share of calls: its weight grows
    /// linearly from 0.1 to 1 over this window. Zero turns slow start off.
    pub slow_start: Duration,
    /// The latency an answer that means "overloaded" (RESOURCE_EXHAUSTED,
    /// or UNAVAILABLE with a retry push-back) is charged at, however fast it
    /// came: a throttled endpoint must look expensive to the balancer, not
    /// fast.
    pub overload_penalty: Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            slow_start: Duration::from_secs(10),
            overload_penalty: Duration::from_millis(250),
        }
    }
}

/// The client's view of one endpoint.
/// Counters an endpoint bumps for the metrics of its upstream.
#[derive(Debug, Clone, Default)]
pub struct EndpointEvents {
    /// Ejections after consecutive failures.
    pub ejections: prometheus_client::metrics::counter::Counter,
    /// Connection failures that scheduled a reconnect.
    pub reconnects: prometheus_client::metrics::counter::Counter,
}

#[derive(Debug)]
pub struct EndpointState {
    /// The discovery id.
    pub id: String,
    /// The address.
    pub addr: std::net::SocketAddr,
    /// Its discovery attributes (version, zone, …), which routes choose
    /// endpoints by.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The connections (each dialled again when it closes; the endpoint stays out of the
    /// pool while they are down). Calls rotate over them.
    channels: Vec<Conn>,
    next_channel: AtomicUsize,
    /// The latency estimate (nanoseconds) and when it was last updated.
    ewma: Mutex<(f64, Instant)>,
    /// Whether any response has fed the estimate (else it is a seed).
    measured: AtomicBool,
    in_flight: AtomicUsize,
    /// When it last began serving (slow start counts from here, or from
    /// the end of an ejection, whichever is later).
    serving_since: Mutex<Instant>,
    /// Whether it ever reported its load (no lock to take if not).
    reports_load: AtomicBool,
    /// Its last load report and when it came.
    load: Mutex<(f64, Instant)>,
    /// Health as the endpoint's grpc.health.v1 Watch stream reports it; false
    /// while the stream is down (the connection failed).
    serving: AtomicBool,
    /// The live Watch stream last said NOT_SERVING: the server answers but
    /// asks to be left (it is draining, or not ready). Such an endpoint is
    /// picked only when no endpoint is available; false once the stream or
    /// the connection ends.
    draining: AtomicBool,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Calls sent here (for operators and tests).
    pub calls: AtomicU64,
    policy: FailurePolicy,
    reconnect: Mutex<Backoff>,
    events: EndpointEvents,
}

impl EndpointState {
    /// A new endpoint, not yet known to be serving.
    pub fn new(
        id: String,
        addr: std::net::SocketAddr,
        channels: Vec<Conn>,
        policy: FailurePolicy,
    ) -> Self {
        Self {
            id,
            addr,
            attributes: Default::default(),
            channels,
            next_channel: AtomicUsize::new(0),
            ewma: Mutex::new((DEFAULT_RTT.as_nanos() as f64, Instant::now())),
            measured: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            serving_since: Mutex::new(Instant::now()),
            reports_load: AtomicBool::new(false),
            load: Mutex::new((0.0, Instant::now())),
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            calls: AtomicU64::new(0),
            policy,
            reconnect: Mutex::new(reconnect_backoff()),
            events: EndpointEvents::default(),
        }
    }

    /// Its Availability Zone, if it registered one.
    pub fn zone(&self) -> Option<&str> {
        self.attributes.get("zone").map(String::as_str)
    }

    /// This endpoint with its discovery attributes.
    pub fn with_attributes(
        mut self,
        attributes: std::collections::BTreeMap<String, String>,
    ) -> Self {
        self.attributes = attributes;
        self
    }

    /// This endpoint, its latency estimate starting at `estimate` (the
    /// average of its measured peers) rather than a fixed guess.
    pub fn seeded(self, estimate: Option<Duration>) -> Self {
        if let (Some(estimate), Ok(mut g)) = (estimate, self.ewma.lock()) {
            g.0 = estimate.as_nanos() as f64;
        }
        self
    }

    /// The current latency estimate, if a response has fed it.
    pub fn measured_latency(&self) -> Option<Duration> {
        if !self.measured.load(Ordering::Acquire) {
            return None;
        }
        let nanos = self
            .ewma
            .lock()
            .map(|g| decayed(g.0, decay_weight(g.1, Instant::now())))
            .ok()?;
        Some(Duration::from_nanos(nanos as u64))
    }

    /// Its share of calls while in slow start, from 0.1 to 1: how long it
    /// has served (since it began, or since its last ejection ended) over
    /// the slow-start window.
    pub fn weight(&self) -> f64 {
        let window = self.policy.slow_start;
        if window.is_zero() {
            return 1.0;
        }
        let now = Instant::now();
        let mut since = self.serving_since.lock().map(|g| *g).unwrap_or(now);
        if let Ok(Some(until)) = self.ejected_until.lock().map(|g| *g) {
            since = since.max(until);
        }
        let served = now.saturating_duration_since(since);
        if served >= window {
            1.0
        } else {
            (served.as_secs_f64() / window.as_secs_f64()).max(MIN_WEIGHT)
        }
    }

    /// This endpoint, counting its ejections and reconnects in `events`.
    pub fn counting(mut self, events: EndpointEvents) -> Self {
        self.events = events;
        self
    }

    /// The connection for the next call (round robin over the endpoint's
    /// connections); `None` if it has none.
    pub fn channel(&self) -> Option<Conn> {
        let n = self.channels.len();
        if n == 0 {
            return None;
        }
        let i = self.next_channel.fetch_add(1, Ordering::Relaxed) % n;
        self.channels.get(i).cloned()
    }

    /// The first connection, which also carries the health watch.
    pub fn primary(&self) -> Option<Conn> {
        self.channels.first().cloned()
    }

    /// Whether the balancer may pick it now.
    pub fn available(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.ejected()
    }

    /// Whether the balancer may pick it when no endpoint is available: its
    /// server said NOT_SERVING on a live connection and still answers. A
    /// rollout that stops old instances before every client has seen the
    /// new ones then costs no call: the old ones serve out their drain.
    pub fn last_resort(&self) -> bool {
        self.draining.load(Ordering::Acquire) && !self.ejected()
    }

    fn ejected(&self) -> bool {
        match self.ejected_until.lock().map(|g| *g) {
            Ok(Some(until)) => Instant::now() < until,
            _ => false,
        }
    }

    /// What the live Watch stream reported.
    pub fn health_reported(&self, serving: bool) {
        self.draining.store(!serving, Ordering::Release);
        self.set_serving(serving);
    }

    /// The load the balancer compares: latency estimate × (in flight + 1),
    /// and ÷ (1 − utilization) while the server's own load report is fresh.
    pub fn cost(&self) -> f64 {
        let ewma = self
            .ewma
            .lock()
            .map(|g| decayed(g.0, decay_weight(g.1, Instant::now())))
            .unwrap_or(0.0);
        ewma * (self.in_flight.load(Ordering::Relaxed) + 1) as f64 / (1.0 - self.utilization())
    }

    /// The server said how loaded it is (0 to 1).
    pub fn load_reported(&self, utilization: f64) {
        if let Ok(mut load) = self.load.lock() {
            *load = (utilization.clamp(0.0, MOST_LOAD), Instant::now());
            self.reports_load.store(true, Ordering::Release);
        }
    }

    /// Its reported utilization while fresh, else 0.
    fn utilization(&self) -> f64 {
        if !self.reports_load.load(Ordering::Acquire) {
            return 0.0;
        }
        match self.load.lock() {
            Ok(g) if g.1.elapsed() < LOAD_FRESH => g.0,
            _ => 0.0,
        }
    }

    /// Marks a call as started; the guard ends it.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self,
            started: Instant::now(),
        }
    }

    /// Records an observed round trip: peaks are taken at once, lower values
    /// are blended in with the decay.
    fn observe(&self, rtt: Duration) {
        if let Ok(mut g) = self.ewma.lock() {
            let now = Instant::now();
            let rtt = rtt.as_nanos() as f64;
            let w = decay_weight(g.1, now);
            let current = decayed(g.0, w);
            g.0 = if rtt > current {
                rtt
            } else {
                current * w + rtt * (1.0 - w)
            };
            g.1 = now;
            self.measured.store(true, Ordering::Release);
        }
    }

    /// The health stream says SERVING (or the server has no health service).
    pub fn set_serving(&self, serving: bool) {
        let was = self.serving.swap(serving, Ordering::AcqRel);
        if serving && !was {
            if let Ok(mut b) = self.reconnect.lock() {
                b.reset();
            }
            if let Ok(mut since) = self.serving_since.lock() {
                *since = Instant::now();
            }
            tracing::debug!(id = %self.id, "endpoint in the pool");
        } else if !serving && was {
            tracing::info!(id = %self.id, addr = %self.addr, "endpoint out of the pool");
        }
    }

    /// The connection failed: out of the pool at once; the delay before the
    /// next connection attempt grows (1 s ×1.6, jitter 0.2, at most 120 s).
    pub fn connection_failed(&self) -> Duration {
        self.events.reconnects.inc();
        self.draining.store(false, Ordering::Release);
        self.set_serving(false);
        self.reconnect
            .lock()
            .map(|mut b| b.next_delay())
            .unwrap_or(Duration::from_secs(1))
    }

    /// A call failed in a way that counts against the endpoint.
    pub fn call_failed(&self) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.policy.consecutive_failures {
            self.consecutive_failures.store(0, Ordering::Release);
            let k = self.ejections.fetch_add(1, Ordering::AcqRel) + 1;
            let length = (self.policy.base_ejection * k).min(self.policy.max_ejection);
            if let Ok(mut until) = self.ejected_until.lock() {
                *until = Some(Instant::now() + length);
            }
            self.events.ejections.inc();
            tracing::warn!(id = %self.id, addr = %self.addr, ?length, "endpoint ejected after {n} consecutive failures");
        }
    }

    /// A call succeeded.
    pub fn call_succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
    }
}

/// A call in progress on an endpoint.
#[derive(Debug)]
pub struct InFlight<'a> {
    endpoint: &'a EndpointState,
    started: Instant,
}

impl InFlight<'_> {
    /// The response arrived: its latency feeds the estimate.
    pub fn responded(self) {
        self.endpoint.observe(self.started.elapsed());
    }

    /// The answer said the endpoint is overloaded: it is charged at least
    /// the overload penalty, so it draws fewer calls rather than more.
    pub fn overloaded(self) {
        let penalty = self.endpoint.policy.overload_penalty;
        self.endpoint.observe(self.started.elapsed().max(penalty));
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How much of an estimate made at `at` still counts at `now`.
fn decay_weight(at: Instant, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    (-elapsed / DECAY.as_secs_f64()).exp()
}

/// The estimate after decay with weight `w`: without new observations it
/// drifts toward the default, so an endpoint that was slow once is tried
/// again eventually.
fn decayed(ewma: f64, w: f64) -> f64 {
    ewma * w + DEFAULT_RTT.as_nanos() as f64 * (1.0 - w)
}

/// The reconnect schedule: 1 s, ×1.6, jitter 0.2, at most 120 s.
pub fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), 1.6, Duration::from_secs(120), 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(policy: FailurePolicy) -> EndpointState {
        let channel = Conn::plaintext(([127, 0, 0, 1], 9).into()).unwrap();
        let e = EndpointState::new(
            "e".into(),
            ([127, 0, 0, 1], 9).into(),
            vec![channel],
            policy,
        );
        e.set_serving(true);
        e
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_growing_times() {
        let e = endpoint(FailurePolicy::default());
        for _ in 0..6 {
            e.call_failed();
        }
        assert!(e.available(), "six failures are not enough");
        e.call_succeeded();
        for _ in 0..6 {
            e.call_failed();
        }
        assert!(e.available(), "a success resets the count");
        e.call_failed();
        assert!(!e.available(), "the seventh consecutive failure ejects");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(e.available(), "back after 30 s");
        for _ in 0..7 {
            e.call_failed();
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!e.available(), "the second ejection lasts 60 s");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(e.available());
    }

    #[tokio::test(start_paused = true)]
    async fn peak_latency_counts_at_once_and_load_multiplies_it() {
        let e = endpoint(FailurePolicy::default());
        let idle = e.cost();
        {
            let call = e.start();
            tokio::time::advance(Duration::from_millis(50)).await;
            call.responded();
        }
        let slow = e.cost();
        assert!(
            slow > idle * 5.0,
            "a 50 ms response raises the estimate at once"
        );
        let _busy = (e.start(), e.start());
        assert!(e.cost() > slow * 2.5, "two calls in flight triple the cost");
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_answer_costs_the_penalty_however_fast_it_came() {
        let (throttled, healthy) = (
            endpoint(FailurePolicy::default()),
            endpoint(FailurePolicy::default()),
        );
        for _ in 0..3 {
            let call = throttled.start();
            tokio::time::advance(Duration::from_micros(200)).await;
            call.overloaded();
            let call = healthy.start();
            tokio::time::advance(Duration::from_millis(2)).await;
            call.responded();
        }
        let penalty = FailurePolicy::default().overload_penalty.as_nanos() as f64;
        assert!(throttled.cost() >= penalty * 0.99, "{}", throttled.cost());
        assert!(throttled.cost() > healthy.cost() * 50.0);
        // Overload is not failure: it does not count toward ejection.
        assert!(throttled.available());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_load_report_weighs_the_cost_and_a_stale_one_does_not() {
        let (busy, idle) = (
            endpoint(FailurePolicy::default()),
            endpoint(FailurePolicy::default()),
        );
        let plain = busy.cost();
        busy.load_reported(0.9);
        idle.load_reported(0.1);
        assert!(
            (busy.cost() / plain - 5.0).abs() < 0.01,
            "{}",
            busy.cost() / plain
        );
        assert!(busy.cost() > idle.cost() * 4.0);
        busy.load_reported(1.0);
        assert!(busy.cost().is_finite(), "never infinite");
        tokio::time::advance(LOAD_FRESH + Duration::from_secs(1)).await;
        assert!(
            (busy.cost() - idle.cost()).abs() < 1.0,
            "stale reports count for nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_serving_on_a_live_stream_is_a_last_resort_until_the_stream_ends() {
        let e = endpoint(FailurePolicy::default());
        assert!(e.available() && !e.last_resort());
        e.health_reported(false);
        assert!(!e.available(), "NOT_SERVING leaves the pool");
        assert!(e.last_resort(), "but still answers, if nothing else does");
        e.connection_failed();
        assert!(!e.last_resort(), "not once its stream or connection ended");
        e.health_reported(false);
        for _ in 0..7 {
            e.call_failed();
        }
        assert!(!e.last_resort(), "an ejected endpoint is no resort");
        e.health_reported(true);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(e.available() && !e.last_resort());
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_delays_grow_from_one_second() {
        let e = endpoint(FailurePolicy::default());
        let first = e.connection_failed();
        assert!(
            !e.available(),
            "a failed connection leaves the pool at once"
        );
        let second = e.connection_failed();
        assert!((0.8..=1.2).contains(&first.as_secs_f64()), "{first:?}");
        assert!((1.28..=1.92).contains(&second.as_secs_f64()), "{second:?}");
        e.set_serving(true);
        assert!(e.available());
        let again = e.connection_failed();
        assert!(
            again.as_secs_f64() <= 1.2,
            "serving again resets the backoff: {again:?}"
        );
    }
}
