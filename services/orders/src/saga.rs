//! The order saga: each step calls inventory or payments with a key derived
//! from the order and the step, so a step repeated after a crash gets its
//! first answer again; the order is written at its outcome, at a rejection,
//! before a wait and as its lease runs down, not after every step (see
//! [`Saga::drive_leased`]). A passing failure (an unreachable service, a
//! timeout) leaves the step to be retried with backoff; a lasting one
//! rejects the order and compensates what was done. Whoever drives a saga
//! holds its lease.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::payments::v1 as payments_pb;

use crate::domain::{Money, Order, OrderStatus, OrdersError, RejectionCode, Step};
use crate::fault::crash_after;
use crate::store::Store;
use crate::upstream::Upstreams;

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
    upstream: Upstreams,
    owner: String,
    merchant_account_id: String,
    config: SagaConfig,
}

/// What a step came to.
enum Outcome {
    /// Record this state, then go on.
    Advance(Box<Order>, String),
    /// Try the step again later.
    Wait(String),
}

impl Saga {
    /// Sagas driven as `owner` (`<instance id>:<run>`), paying captures to
    /// `merchant_account_id`.
    pub fn new(
        store: Store,
        upstream: Upstreams,
        owner: String,
        merchant_account_id: String,
        config: SagaConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            upstream,
            owner,
            merchant_account_id,
            config,
        })
    }

    /// The store, for the API and the recovery loop.
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
                Outcome::Advance(next, detail) => {
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
                Outcome::Wait(detail) => {
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

    async fn step(&self, order: &Order) -> Outcome {
        let step = order.step;
        let outcome = match step {
            Step::Reserve => self.reserve(order).await,
            Step::Authorize => self.authorize(order).await,
            Step::Commit => self.commit(order).await,
            Step::Capture => self.capture(order).await,
            Step::Void => self.void(order).await,
            Step::Release => self.release(order).await,
            Step::Refund => self.refund(order).await,
            Step::Restock => self.restock(order).await,
            Step::Done => return Outcome::Wait("settled".into()),
        };
        match outcome {
            Ok(outcome) => {
                crash_after(&step.as_str().to_ascii_lowercase());
                outcome
            }
            Err(status) => Outcome::Wait(format!(
                "{}: {:?} {}",
                step.as_str(),
                status.code(),
                status.message()
            )),
        }
    }

    async fn reserve(&self, order: &Order) -> Result<Outcome, Status> {
        let request = inventory_pb::ReserveStockRequest {
            idempotency_key: order.key(Step::Reserve),
            order_id: order.order_id.clone(),
            lines: order
                .lines
                .iter()
                .map(|l| inventory_pb::ReservationLineRequest {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                })
                .collect(),
        };
        let reply = self
            .upstream
            .inventory
            .clone()
            .reserve_stock(self.upstream.request(request))
            .await;
        let reservation = match reply {
            Ok(r) => r.into_inner().reservation.unwrap_or_default(),
            Err(s) => {
                let code = match s.code() {
                    Code::NotFound => RejectionCode::UnknownProduct,
                    Code::FailedPrecondition => RejectionCode::OutOfStock,
                    _ => RejectionCode::Failed,
                };
                return lasting(order, s, code);
            }
        };
        let mut next = order.clone();
        next.reservation_id = Some(reservation.reservation_id.clone());
        for line in &mut next.lines {
            line.unit_price = reservation
                .lines
                .iter()
                .find(|r| r.sku == line.sku)
                .and_then(|r| r.unit_price.as_ref())
                .map(|p| Money::new(p.amount_minor, p.currency_code.clone()));
        }
        match total(&next) {
            Ok(total) => {
                // Nothing to pay for free goods: straight to the sale.
                next.step = if total.amount_minor == 0 {
                    Step::Commit
                } else {
                    Step::Authorize
                };
                next.total = Some(total);
                Ok(advance(next, "stock reserved"))
            }
            Err(why) => Ok(advance(next.rejected(RejectionCode::Failed, why), why)),
        }
    }

    async fn authorize(&self, order: &Order) -> Result<Outcome, Status> {
        let request = payments_pb::AuthorizeRequest {
            idempotency_key: order.key(Step::Authorize),
            account_id: order.payment_account_id.clone(),
            amount: order.total.as_ref().map(Money::to_pb),
            reference: order.order_id.clone(),
        };
        let reply = self
            .upstream
            .payments
            .clone()
            .authorize(self.upstream.request(request))
            .await;
        let auth = match reply {
            Ok(r) => r.into_inner().authorization.unwrap_or_default(),
            Err(s) => {
                let code = match s.code() {
                    Code::NotFound => RejectionCode::UnknownAccount,
                    _ => RejectionCode::Failed,
                };
                return lasting(order, s, code);
            }
        };
        let mut next = order.clone();
        next.authorization_id = Some(auth.authorization_id.clone());
        if auth.status() == payments_pb::AuthorizationStatus::Authorized {
            next.authorized = true;
            next.step = Step::Commit;
            return Ok(advance(next, "payment authorized"));
        }
        let why = match auth.decline_reason() {
            payments_pb::DeclineReason::InsufficientFunds => "insufficient funds",
            payments_pb::DeclineReason::CurrencyMismatch => {
                "the account is in another currency than the order"
            }
            payments_pb::DeclineReason::Unspecified => "declined",
        };
        let message = format!("payment declined: {why}");
        Ok(advance(
            next.rejected(RejectionCode::PaymentDeclined, &message),
            message,
        ))
    }

    async fn commit(&self, order: &Order) -> Result<Outcome, Status> {
        let request = inventory_pb::CommitReservationRequest {
            idempotency_key: order.key(Step::Commit),
            reservation_id: order.reservation_id.clone().unwrap_or_default(),
        };
        let reply = self
            .upstream
            .inventory
            .clone()
            .commit_reservation(self.upstream.request(request))
            .await;
        if let Err(s) = reply {
            return lasting(order, s, RejectionCode::Failed);
        }
        let mut next = order.clone();
        next.committed = true;
        next.step = Step::Capture;
        Ok(advance(next, "stock sold"))
    }

    async fn capture(&self, order: &Order) -> Result<Outcome, Status> {
        if order.authorization_id.is_none() {
            let mut next = order.clone();
            next.status = OrderStatus::Confirmed;
            next.step = Step::Done;
            return Ok(advance(next, "nothing to pay"));
        }
        let request = payments_pb::CaptureRequest {
            idempotency_key: order.key(Step::Capture),
            authorization_id: order.authorization_id.clone().unwrap_or_default(),
            payee_account_id: self.merchant_account_id.clone(),
        };
        let reply = self
            .upstream
            .payments
            .clone()
            .capture(self.upstream.request(request))
            .await;
        if let Err(s) = reply {
            return lasting(order, s, RejectionCode::Failed);
        }
        let mut next = order.clone();
        next.status = OrderStatus::Confirmed;
        next.step = Step::Done;
        Ok(advance(next, "payment captured"))
    }

    async fn void(&self, order: &Order) -> Result<Outcome, Status> {
        let request = payments_pb::VoidRequest {
            idempotency_key: order.key(Step::Void),
            authorization_id: order.authorization_id.clone().unwrap_or_default(),
        };
        self.upstream
            .payments
            .clone()
            .void(self.upstream.request(request))
            .await
            .map_err(compensation_failed)?;
        let mut next = order.clone();
        next.authorized = false;
        if next.reservation_id.is_some() {
            next.step = Step::Release;
        } else {
            next.status = OrderStatus::Rejected;
            next.step = Step::Done;
        }
        Ok(advance(next, "payment voided"))
    }

    async fn release(&self, order: &Order) -> Result<Outcome, Status> {
        let key = order.key(Step::Release);
        let reservation_id = order.reservation_id.clone().unwrap_or_default();
        let mut inventory = self.upstream.inventory.clone();
        if order.committed {
            let request = inventory_pb::ReturnReservationRequest {
                idempotency_key: key,
                reservation_id,
            };
            inventory
                .return_reservation(self.upstream.request(request))
                .await
                .map_err(compensation_failed)?;
        } else {
            let request = inventory_pb::ReleaseReservationRequest {
                idempotency_key: key,
                reservation_id,
            };
            inventory
                .release_reservation(self.upstream.request(request))
                .await
                .map_err(compensation_failed)?;
        }
        let mut next = order.clone();
        next.status = OrderStatus::Rejected;
        next.step = Step::Done;
        Ok(advance(next, "stock given back"))
    }

    async fn refund(&self, order: &Order) -> Result<Outcome, Status> {
        if order.authorization_id.is_none() {
            let mut next = order.clone();
            next.step = Step::Restock;
            return Ok(advance(next, "nothing to refund"));
        }
        let request = payments_pb::RefundRequest {
            idempotency_key: order.key(Step::Refund),
            authorization_id: order.authorization_id.clone().unwrap_or_default(),
            amount: order.total.as_ref().map(Money::to_pb),
        };
        self.upstream
            .payments
            .clone()
            .refund(self.upstream.request(request))
            .await
            .map_err(compensation_failed)?;
        let mut next = order.clone();
        next.step = Step::Restock;
        Ok(advance(next, "payment refunded"))
    }

    async fn restock(&self, order: &Order) -> Result<Outcome, Status> {
        let request = inventory_pb::ReturnReservationRequest {
            idempotency_key: order.key(Step::Restock),
            reservation_id: order.reservation_id.clone().unwrap_or_default(),
        };
        self.upstream
            .inventory
            .clone()
            .return_reservation(self.upstream.request(request))
            .await
            .map_err(compensation_failed)?;
        let mut next = order.clone();
        next.status = OrderStatus::Cancelled;
        next.step = Step::Done;
        Ok(advance(next, "stock returned"))
    }
}

fn advance(next: Order, detail: impl Into<String>) -> Outcome {
    Outcome::Advance(Box::new(next), detail.into())
}

/// Whether a failed call's outcome will not change by trying again: the
/// request itself is refused. Anything else may pass (the service was
/// unreachable, overloaded, timed out, or restarting).
fn is_lasting(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

/// A forward step failed: a lasting failure rejects the order (with `code`)
/// and compensates; a passing one waits.
fn lasting(order: &Order, status: Status, code: RejectionCode) -> Result<Outcome, Status> {
    if !is_lasting(status.code()) {
        return Err(status);
    }
    let message = status.message().to_owned();
    Ok(advance(
        order.rejected(code, &message),
        format!("{}: {message}", order.step.as_str()),
    ))
}

/// A compensating step must happen, so every failure waits and is retried;
/// a lasting one is logged loudly because it needs an operator.
fn compensation_failed(status: Status) -> Status {
    if is_lasting(status.code()) {
        tracing::error!(code = ?status.code(), message = status.message(), "compensation refused; will keep retrying");
    }
    status
}

/// The order's total from its priced lines, all in one currency.
fn total(order: &Order) -> Result<Money, &'static str> {
    let mut total: Option<Money> = None;
    for line in &order.lines {
        let price = line
            .unit_price
            .as_ref()
            .ok_or("a line came back without a price")?;
        let amount = price
            .amount_minor
            .checked_mul(line.quantity)
            .ok_or("the order total is too large")?;
        match &mut total {
            None => total = Some(Money::new(amount, price.currency_code.clone())),
            Some(t) if t.currency_code == price.currency_code => {
                t.amount_minor = t
                    .amount_minor
                    .checked_add(amount)
                    .ok_or("the order total is too large")?;
            }
            Some(_) => return Err("the lines are priced in more than one currency"),
        }
    }
    total.ok_or("the order has no lines")
}
