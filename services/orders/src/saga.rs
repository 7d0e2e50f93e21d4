//! The saga's driver: makes each step's call through an [`Upstream`], takes
//! the next state from the saga's table ([`crate::machine`]), and writes the
//! order at its outcome, at a rejection, before a wait and as its lease runs
//! down, not after every step (see [`Saga::drive_leased`]). A step that must
//! wait is retried with backoff. Whoever drives a saga holds its lease.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Order, OrdersError, Step};
use crate::fault::crash_after;
use crate::machine::{self, Call, Next, Outcome};
use crate::store::Store;

/// Where the saga's calls go: inventory and payments, or a stand-in.
/// Every answer, a failure included, comes back as an [`Outcome`].
#[tonic::async_trait]
pub trait Upstream: Send + Sync + std::fmt::Debug + 'static {
    /// Makes `call` and says what it came to.
    async fn call(&self, call: Call) -> Outcome;
}

/// How sagas are driven.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// How long a driver may hold a saga without writing to it.
    pub lease: Duration,
    /// The first retry delay of a step that failed for a passing reason…
    pub retry_base: Duration,
    /// … doubling up to this.
    pub retry_max: Duration,
    /// How often the recovery loop looks for sagas to resume.
    pub recovery_every: Duration,
    /// Most sagas the recovery loop drives at once.
    pub recovery_concurrency: usize,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            recovery_every: Duration::from_secs(1),
            recovery_concurrency: 32,
        }
    }
}

/// Drives order sagas.
#[derive(Debug)]
pub struct Saga {
    store: Store,
    upstream: Box<dyn Upstream>,
    owner: String,
    merchant_account_id: String,
    config: SagaConfig,
}

impl Saga {
    /// Sagas driven as `owner` (`<instance id>:<run>`), paying captures to
    /// `merchant_account_id`.
    pub fn new(
        store: Store,
        upstream: impl Upstream,
        owner: String,
        merchant_account_id: String,
        config: SagaConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            upstream: Box::new(upstream),
            owner,
            merchant_account_id,
            config,
        })
    }

    /// The store, for the recovery loop.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This driver's lease owner name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The saga settings.
    pub fn config(&self) -> &SagaConfig {
        &self.config
    }

    /// Drives the order's saga as far as it goes now: to its end, to a step
    /// that must wait, or until another driver holds it. Returns the order
    /// as it then stands.
    pub async fn drive(&self, order_id: &str) -> Result<Order, OrdersError> {
        match self
            .store
            .claim(order_id, &self.owner, self.config.lease)
            .await?
        {
            Some(order) => self.drive_leased(order).await,
            None => self.store.order(order_id).await,
        }
    }

    /// Drives an order whose lease this driver holds already (one it has
    /// just placed).
    ///
    /// Forward steps are not written one by one: every step's call carries
    /// a key of the order and the step, and the service it calls answers a
    /// repeated key with its first answer (a refusal or a decline included),
    /// so a driver that resumes from the last written step replays the calls
    /// made since and reaches the same state. The order is written when it
    /// settles, when it is rejected (before compensating), before a step
    /// waits (a wait may outlast the services' memory of keys; a crash is
    /// resumed within a lease), and when half the lease has gone (which
    /// renews it); each write logs every transition since the last, in one
    /// transaction. On the success path that is one write after the one
    /// that placed the order.
    pub async fn drive_leased(&self, mut order: Order) -> Result<Order, OrdersError> {
        let order_id = order.order_id.clone();
        let order_id = order_id.as_str();
        // The order as the database has it, and what happened since.
        let mut written = order.clone();
        let mut since: Vec<(Step, Step, String)> = Vec::new();
        let mut leased_at = tokio::time::Instant::now();
        loop {
            if order.step == Step::Done {
                return Ok(order);
            }
            match self.step(&order).await {
                Next::Advance {
                    order: next,
                    detail,
                } => {
                    let next = *next;
                    since.push((order.step, next.step, detail));
                    let must_write = next.step == Step::Done
                        || next.status != written.status
                        || leased_at.elapsed() >= self.config.lease / 2;
                    if !must_write {
                        order = next;
                        continue;
                    }
                    match self
                        .store
                        .save(&written, &next, &self.owner, self.config.lease, &since)
                        .await?
                    {
                        Some(saved) => {
                            order = saved;
                            written = order.clone();
                            since.clear();
                            leased_at = tokio::time::Instant::now();
                        }
                        // Another driver took over (our lease ran out).
                        None => return self.store.order(order_id).await,
                    }
                }
                Next::Wait { detail, alarm } => {
                    if alarm {
                        tracing::error!(order_id, %detail, "saga step refused where it must not be; will keep retrying, an operator should look");
                    }
                    // The progress so far is written before waiting: a wait
                    // can outlast the services' memory of keys (a week by
                    // default), and a replay must stay within it.
                    if !since.is_empty() {
                        match self
                            .store
                            .save(&written, &order, &self.owner, self.config.lease, &since)
                            .await?
                        {
                            Some(saved) => written = saved,
                            None => return self.store.order(order_id).await,
                        }
                    }
                    let delay = self.backoff(written.attempts);
                    tracing::info!(order_id, step = order.step.as_str(), ?delay, %detail, "saga step deferred");
                    self.store
                        .retry_later(&written, &self.owner, delay, &detail)
                        .await?;
                    return self.store.order(order_id).await;
                }
            }
        }
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.clamp(0, 20)).unwrap_or(0);
        self.config
            .retry_base
            .saturating_mul(1 << doublings)
            .min(self.config.retry_max)
    }

    /// Makes the order's step's call (if it makes one) and looks up what
    /// follows in the saga's table.
    async fn step(&self, order: &Order) -> Next {
        let outcome = match machine::call(order, &self.merchant_account_id) {
            Some(call) => self.upstream.call(call).await,
            None => Outcome::NothingToDo,
        };
        if !matches!(outcome, Outcome::Failed { .. }) {
            crash_after(&order.step.as_str().to_ascii_lowercase());
        }
        machine::transition(order, outcome)
    }
}
