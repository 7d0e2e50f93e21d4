//! Where a process's route table (and its policy) come from and how they
//! stay current: one poller per process and source reads the text from its
//! source (a file, or a parameter in SSM Parameter Store) every period with
//! jitter, applies a changed text if it parses, and otherwise keeps what it
//! has. A source that cannot be read backs off (doubling to a bound) and
//! keeps the last known good value; a malformed text is refused, counted
//! and logged once per distinct text. Calls read the table when they start,
//! so a change never alters a call in flight.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_discovery::backoff::{Backoff, jittered};

use super::routes::{RouteTable, ServiceRoutes};

/// Why a source could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The source failed for a reason that may pass (I/O, the network, the
    /// service).
    #[error("{0}")]
    Failed(String),
    /// The source was throttled: back off longer.
    #[error("throttled: {0}")]
    Throttled(String),
}

/// The answer of a fetch: the table's text, or `None` when the source says
/// there is no table (no file, no parameter): no routes.
pub type Fetched = Result<Option<String>, FetchError>;

/// A source of a route table's text.
pub trait RouteFetch: Send + Sync + 'static {
    /// Reads the current text.
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Fetched> + Send + '_>>;
    /// What it reads, for logs.
    fn describe(&self) -> String;
}

/// A file on disk (locally, `weft up` points every process at one).
#[derive(Debug, Clone)]
pub struct FileSource(pub PathBuf);

impl RouteFetch for FileSource {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Fetched> + Send + '_>> {
        Box::pin(async move {
            match tokio::fs::read_to_string(&self.0).await {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(FetchError::Failed(e.to_string())),
            }
        })
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// The longest one read of a source may take: a source that hangs counts
/// as one that failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How the poller paces itself.
#[derive(Debug, Clone, Copy)]
pub struct RoutePolling {
    /// How often the source is read.
    pub every: Duration,
    /// ± fraction applied to every period, so processes started together
    /// do not read together.
    pub jitter: f64,
    /// The first delay after a failed read (doubling up to `max_backoff`).
    pub error_backoff: Duration,
    /// The first delay after throttling.
    pub throttle_backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
}

impl Default for RoutePolling {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(5),
            jitter: 0.1,
            error_backoff: Duration::from_secs(1),
            throttle_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Counters of a live source (routes, policy), for the process's metrics.
#[derive(Debug, Clone, Default)]
pub struct SourceEvents {
    /// Values applied.
    pub applied: Counter,
    /// Texts refused as malformed (each distinct text once).
    pub rejected: Counter,
    /// Reads that failed.
    pub fetch_errors: Counter,
    /// 1 while the text last read was refused (the table in use is an
    /// older one), else 0.
    pub stale: Gauge,
}

/// A value read from a live source (see [`Live::follow`]), current for as
/// long as any handle lives.
#[derive(Debug)]
pub struct Live<T> {
    rx: watch::Receiver<Arc<T>>,
    _poller: Option<Arc<AbortOnDrop>>,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self {
            rx: self.rx.clone(),
            _poller: self._poller.clone(),
        }
    }
}

/// How a live source's text becomes its value: `None` is the source saying
/// there is none; an error refuses the text (the value in use is kept).
pub type Parse<T> = fn(Option<&str>) -> Result<T, String>;

impl<T: Send + Sync + 'static> Live<T> {
    /// A value that never changes.
    pub fn fixed(value: T) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(value));
        Self { rx, _poller: None }
    }

    /// Follows `source` from `initial`, reading it once before returning
    /// (so the first calls already see its value; a first read that fails
    /// keeps `initial` and keeps trying).
    pub async fn follow(
        source: impl RouteFetch,
        polling: RoutePolling,
        events: SourceEvents,
        initial: T,
        parse: Parse<T>,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(initial));
        let mut poller = Poller {
            source,
            polling,
            events,
            tx,
            parse,
            last_text: None,
            errors: Backoff::new(
                polling.error_backoff,
                2.0,
                polling.max_backoff,
                polling.jitter,
            ),
            throttles: Backoff::new(
                polling.throttle_backoff,
                2.0,
                polling.max_backoff,
                polling.jitter,
            ),
        };
        let first = poller.once().await;
        let task = tokio::spawn(async move {
            let mut delay = first;
            loop {
                tokio::time::sleep(delay).await;
                if poller.tx.is_closed() {
                    return;
                }
                delay = poller.once().await;
            }
        });
        Self {
            rx,
            _poller: Some(Arc::new(AbortOnDrop(task))),
        }
    }

    /// The value now.
    pub fn current(&self) -> Arc<T> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every new value (for tests and tools).
    pub fn watch(&self) -> watch::Receiver<Arc<T>> {
        self.rx.clone()
    }
}

/// The route table a process's channels read; follows its source for as
/// long as any handle lives.
#[derive(Debug, Clone)]
pub struct Routes(Live<RouteTable>);

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self::fixed(RouteTable::default())
    }
}

/// A route table from its text; no text is no routes.
fn parse_routes(text: Option<&str>) -> Result<RouteTable, String> {
    match text {
        None => Ok(RouteTable::default()),
        Some(t) => RouteTable::from_toml(t).map_err(|e| e.to_string()),
    }
}

impl Routes {
    /// A table that never changes.
    pub fn fixed(table: RouteTable) -> Self {
        Self(Live::fixed(table))
    }

    /// Follows `source`, reading it first before returning (so the first
    /// calls already see its table; a first read that fails starts with no
    /// routes and keeps trying).
    pub async fn follow(
        source: impl RouteFetch,
        polling: RoutePolling,
        events: SourceEvents,
    ) -> Self {
        Self(Live::follow(source, polling, events, RouteTable::default(), parse_routes).await)
    }

    /// The table now.
    pub fn current(&self) -> Arc<RouteTable> {
        self.0.current()
    }

    /// The routes of `service` now, if the table names it.
    pub fn service(&self, service: &str) -> Option<Arc<ServiceRoutes>> {
        self.0.rx.borrow().service(service).cloned()
    }
}

struct Poller<S, T> {
    source: S,
    polling: RoutePolling,
    events: SourceEvents,
    tx: watch::Sender<Arc<T>>,
    parse: Parse<T>,
    /// The text last read (applied or refused), so an unchanged text costs
    /// nothing and a refused one is logged once.
    last_text: Option<Option<String>>,
    errors: Backoff,
    throttles: Backoff,
}

impl<S: RouteFetch, T> Poller<S, T> {
    /// Reads the source once; returns how long to wait before the next read.
    async fn once(&mut self) -> Duration {
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch())
            .await
            .unwrap_or_else(|_| Err(FetchError::Failed("the read timed out".into())));
        let text = match fetched {
            Ok(text) => text,
            Err(e) => {
                self.events.fetch_errors.inc();
                let delay = match &e {
                    FetchError::Throttled(_) => self.throttles.next_delay(),
                    FetchError::Failed(_) => self.errors.next_delay(),
                };
                tracing::warn!(source = %self.source.describe(), error = %e, ?delay, "cannot read; keeping what is in use");
                return delay;
            }
        };
        self.errors.reset();
        self.throttles.reset();
        if self.last_text.as_ref() != Some(&text) {
            match (self.parse)(text.as_deref()) {
                Ok(value) => {
                    self.events.applied.inc();
                    self.events.stale.set(0);
                    tracing::info!(source = %self.source.describe(), "applied");
                    self.tx.send_replace(Arc::new(value));
                }
                Err(e) => {
                    self.events.rejected.inc();
                    self.events.stale.set(1);
                    tracing::warn!(source = %self.source.describe(), error = %e, "refused; keeping what is in use");
                }
            }
            self.last_text = Some(text);
        }
        jittered(self.polling.every, self.polling.jitter)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A source whose answers the test sets, counting its reads.
    #[derive(Clone)]
    struct StandIn(Arc<Mutex<(Fetched, u32)>>);

    impl Default for StandIn {
        fn default() -> Self {
            Self(Arc::new(Mutex::new((Ok(None), 0))))
        }
    }

    impl StandIn {
        fn answer(&self, fetched: Fetched) {
            self.0.lock().unwrap().0 = fetched;
        }
        fn reads(&self) -> u32 {
            self.0.lock().unwrap().1
        }
    }

    impl RouteFetch for StandIn {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Fetched> + Send + '_>> {
            let mut g = self.0.lock().unwrap();
            g.1 += 1;
            let answer = g.0.clone();
            Box::pin(async move { answer })
        }
        fn describe(&self) -> String {
            "stand-in".into()
        }
    }

    const V1: &str = "[services.a]\nsplit = [{ subset = { v = \"1\" }, weight = 1 }]";
    const V2: &str = "[services.a]\nsplit = [{ subset = { v = \"2\" }, weight = 1 }]";

    fn version(routes: &Routes) -> Option<String> {
        routes
            .service("a")
            .and_then(|s| s.split().first().map(|(subset, _)| subset.to_string()))
    }

    fn polling() -> RoutePolling {
        RoutePolling {
            jitter: 0.0,
            ..RoutePolling::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_applied_within_one_period() {
        let source = StandIn::default();
        source.answer(Ok(Some(V1.into())));
        let events = SourceEvents::default();
        let routes = Routes::follow(source.clone(), polling(), events.clone()).await;
        assert_eq!(
            version(&routes).as_deref(),
            Some("v=1"),
            "read before returning"
        );
        source.answer(Ok(Some(V2.into())));
        tokio::time::sleep(Duration::from_millis(5_010)).await;
        assert_eq!(version(&routes).as_deref(), Some("v=2"));
        assert_eq!(events.applied.get(), 2);
        // An unchanged text is not applied again.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(events.applied.get(), 2);
        // No table at the source: no routes.
        source.answer(Ok(None));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(version(&routes), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_update_is_refused_once_and_the_table_kept() {
        let source = StandIn::default();
        source.answer(Ok(Some(V1.into())));
        let events = SourceEvents::default();
        let routes = Routes::follow(source.clone(), polling(), events.clone()).await;
        source.answer(Ok(Some("[services.a]\nsplit = [{ weight = 1 }]".into())));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            version(&routes).as_deref(),
            Some("v=1"),
            "the table in use stays"
        );
        assert_eq!(events.rejected.get(), 1, "refused once, not every period");
        assert_eq!(events.stale.get(), 1);
        source.answer(Ok(Some(V2.into())));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(version(&routes).as_deref(), Some("v=2"));
        assert_eq!(events.stale.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_keeps_the_last_good_table_and_backs_off() {
        let source = StandIn::default();
        source.answer(Ok(Some(V1.into())));
        let events = SourceEvents::default();
        let routes = Routes::follow(source.clone(), polling(), events.clone()).await;
        source.answer(Err(FetchError::Failed("connection refused".into())));
        // Past the read at 5 s, the first to fail.
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        let at_outage = source.reads();
        // 1 s, 2 s, 4 s, 8 s, 16 s: five reads in the next 31 s, not six a
        // period.
        tokio::time::sleep(Duration::from_millis(31_500)).await;
        assert_eq!(source.reads() - at_outage, 5);
        assert_eq!(version(&routes).as_deref(), Some("v=1"));
        assert_eq!(events.fetch_errors.get(), 6);
        // Throttling starts its own, longer backoff.
        source.answer(Err(FetchError::Throttled("rate exceeded".into())));
        let before = source.reads();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let throttled_reads = source.reads() - before;
        assert!(
            throttled_reads <= 4,
            "{throttled_reads} reads while throttled"
        );
        // Back: the period again, and the table follows.
        source.answer(Ok(Some(V2.into())));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(version(&routes).as_deref(), Some("v=2"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_poller_stops_with_its_last_handle() {
        let source = StandIn::default();
        source.answer(Ok(Some(V1.into())));
        let routes = Routes::follow(source.clone(), polling(), SourceEvents::default()).await;
        let copy = routes.clone();
        drop(routes);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(source.reads() >= 3, "a copy keeps it going");
        drop(copy);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let reads = source.reads();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(source.reads(), reads);
    }
}
