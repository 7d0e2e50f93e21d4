//! Rate limits per caller: the policy's `[[limit]]` rules give each caller
//! identity a token bucket per rule; a call over its caller's limit is
//! answered RESOURCE_EXHAUSTED at once, with `grpc-retry-pushback-ms`
//! saying when a token will be there, before any handler work. The mesh
//! client charges such an answer as a slow one and waits out the push-back
//! before retrying. The buckets are bounded: see [`MAX_BUCKETS`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::authorize::{CallerIdentity, DenialLog};
use crate::identity::SpiffeId;
use crate::metrics::{LimitRule, Metrics};
use crate::policy::{Limit, Policy, SharedPolicy};

/// The most buckets one server keeps. A full bucket carries no state (a
/// new one starts full), so full ones are dropped first; callers beyond the
/// bound with no full bucket to drop share one bucket per rule.
pub const MAX_BUCKETS: usize = 10_000;
/// The most refusals logged per second (each is also counted).
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

/// One caller's tokens under one rule.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens at `at`, from 0 to the limit's burst.
    tokens: f64,
    at: Instant,
    limit: Limit,
}

impl Bucket {
    fn full(limit: Limit, now: Instant) -> Self {
        Self {
            tokens: limit.burst,
            at: now,
            limit,
        }
    }

    /// Whether it has refilled by `now`: it then carries nothing a new
    /// bucket would not.
    fn is_full(&self, now: Instant) -> bool {
        let mut b = *self;
        b.refill(now);
        b.tokens >= b.limit.burst
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.rate).min(self.limit.burst);
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.limit.rate,
            ))
        }
    }
}

/// Each caller's bucket per rule.
type Buckets = HashMap<(usize, Arc<SpiffeId>), Bucket>;

/// Why a call was refused: the rule that refused it and how long until its
/// caller has a token again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverLimit {
    /// The `[[limit]]` rule, from 1.
    pub rule: usize,
    /// Until a token is there.
    pub retry_after: Duration,
}

/// The buckets of every caller under a policy's limits. Pure: the caller,
/// the method and the time in, a verdict out.
#[derive(Debug)]
pub struct Limiter {
    policy: SharedPolicy,
    trust_domain: Arc<str>,
    /// Every caller's bucket per rule, at most [`MAX_BUCKETS`], under the
    /// policy they were made for (a new policy starts every bucket anew:
    /// its rules may be others).
    buckets: Mutex<(Option<Arc<Policy>>, Buckets)>,
    /// The bucket per rule that callers share once `buckets` is full.
    overflow: Mutex<HashMap<usize, Bucket>>,
}

impl Limiter {
    /// The limits of `policy` on a server of `trust_domain`.
    pub fn new(policy: SharedPolicy, trust_domain: &str) -> Self {
        Self {
            policy,
            trust_domain: trust_domain.into(),
            buckets: Mutex::new((None, HashMap::new())),
            overflow: Mutex::new(HashMap::new()),
        }
    }

    /// Lets `caller` call `path` now, or says why not.
    pub fn check(&self, caller: &Arc<SpiffeId>, path: &str, now: Instant) -> Result<(), OverLimit> {
        let policy = self.policy.load();
        let Some(limit) = policy.limit_for(&self.trust_domain, caller, path) else {
            return Ok(());
        };
        let over = |retry_after| OverLimit {
            rule: limit.rule,
            retry_after,
        };
        let Ok(mut guard) = self.buckets.lock() else {
            return Ok(());
        };
        let (made_for, buckets) = &mut *guard;
        if !made_for.as_ref().is_some_and(|p| Arc::ptr_eq(p, &policy)) {
            *made_for = Some(Arc::clone(&policy));
            buckets.clear();
            if let Ok(mut shared) = self.overflow.lock() {
                shared.clear();
            }
        }
        let key = (limit.rule, caller.clone());
        if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= MAX_BUCKETS {
                drop(guard);
                let Ok(mut shared) = self.overflow.lock() else {
                    return Ok(());
                };
                return shared
                    .entry(limit.rule)
                    .or_insert_with(|| Bucket::full(limit, now))
                    .take(now)
                    .map_err(over);
            }
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(limit, now))
            .take(now)
            .map_err(over)
    }

    /// Buckets kept (for tests and operators).
    pub fn buckets(&self) -> usize {
        self.buckets.lock().map(|b| b.1.len()).unwrap_or(0)
    }
}

/// Applies the policy's rate limits to authenticated callers (after
/// [`crate::AuthorizeLayer`], which names the caller).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
    metrics: Arc<Metrics>,
    refusals: Arc<DenialLog>,
}

impl RateLimitLayer {
    /// The limits of `policy` as it is at each call (none without a
    /// policy) on a server of `trust_domain`, counting refusals in
    /// `metrics`.
    pub fn new(policy: Option<SharedPolicy>, trust_domain: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            limiter: policy.map(|p| Arc::new(Limiter::new(p, trust_domain))),
            metrics,
            refusals: Arc::new(DenialLog::new(REFUSALS_LOGGED_PER_SECOND)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

type Responding<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for RateLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Responding<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let verdict = match (
            &self.layer.limiter,
            request.extensions().get::<CallerIdentity>(),
        ) {
            (Some(limiter), Some(CallerIdentity(caller))) => {
                limiter.check(caller, request.uri().path(), Instant::now())
            }
            _ => Ok(()),
        };
        if let Err(over) = verdict {
            self.layer
                .metrics
                .server_rate_limited
                .get_or_create(&LimitRule {
                    limit: over.rule.to_string(),
                })
                .inc();
            if let Some(left_out) = self.layer.refusals.admit(std::time::Instant::now())
                && let Some(CallerIdentity(caller)) = request.extensions().get::<CallerIdentity>()
            {
                tracing::info!(%caller, limit = over.rule, left_out, "call over its rate limit");
            }
            return Box::pin(async move { Ok(refusal(over)) });
        }
        // The clone that was made ready is the one called (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

/// RESOURCE_EXHAUSTED with the push-back in milliseconds (rounded up, so a
/// client that waits it out finds a token).
fn refusal(over: OverLimit) -> http::Response<tonic::body::Body> {
    let ms = over.retry_after.as_micros().div_ceil(1000).max(1);
    let mut response =
        Status::resource_exhausted(format!("rate limit exceeded; retry in {ms} ms")).into_http();
    response.headers_mut().insert(
        crate::client::PUSHBACK_HEADER,
        http::HeaderValue::from(ms as u64),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(text: &str) -> Limiter {
        Limiter::new(SharedPolicy::new(Policy::from_toml(text).unwrap()), "td")
    }

    fn id(s: &str) -> Arc<SpiffeId> {
        Arc::new(SpiffeId::parse(s).unwrap())
    }

    const TEN_A_SECOND: &str = r#"
        [[limit]]
        methods = ["pkg.Svc/*"]
        callers = ["spiffe://td/operator/*"]
        rate = 10
        burst = 3
    "#;

    #[tokio::test(start_paused = true)]
    async fn a_caller_gets_its_burst_then_its_rate_and_others_keep_theirs() {
        let l = limiter(TEN_A_SECOND);
        let (alice, bob) = (
            id("spiffe://td/operator/alice"),
            id("spiffe://td/operator/bob"),
        );
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(&alice, "/pkg.Svc/Get", now), Ok(()));
        }
        let over = l.check(&alice, "/pkg.Svc/Get", now).unwrap_err();
        assert_eq!(over.rule, 1);
        assert_eq!(over.retry_after, Duration::from_millis(100));
        // Bob has a bucket of his own; other methods are not limited.
        assert_eq!(l.check(&bob, "/pkg.Svc/Get", now), Ok(()));
        assert_eq!(l.check(&alice, "/other.Svc/Get", now), Ok(()));
        // A token a tenth of a second later, and no more.
        let later = now + Duration::from_millis(100);
        assert_eq!(l.check(&alice, "/pkg.Svc/Get", later), Ok(()));
        assert!(l.check(&alice, "/pkg.Svc/Get", later).is_err());
        // A quiet spell refills to the burst, not beyond.
        let quiet = later + Duration::from_secs(60);
        let allowed = (0..10)
            .filter(|_| l.check(&alice, "/pkg.Svc/Get", quiet).is_ok())
            .count();
        assert_eq!(allowed, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_are_bounded_and_full_ones_go_first() {
        let l = limiter(TEN_A_SECOND);
        let now = Instant::now();
        for n in 0..MAX_BUCKETS {
            let caller = id(&format!("spiffe://td/operator/{n}"));
            assert!(l.check(&caller, "/pkg.Svc/Get", now).is_ok());
        }
        assert_eq!(l.buckets(), MAX_BUCKETS);
        // None has refilled yet: a newcomer shares the overflow bucket.
        let newcomer = id("spiffe://td/operator/new");
        for _ in 0..3 {
            assert!(l.check(&newcomer, "/pkg.Svc/Get", now).is_ok());
        }
        assert!(
            l.check(&id("spiffe://td/operator/other"), "/pkg.Svc/Get", now)
                .is_err()
        );
        assert_eq!(l.buckets(), MAX_BUCKETS, "never beyond the bound");
        // Once the old buckets are full again they make room.
        let later = now + Duration::from_secs(1);
        assert!(l.check(&newcomer, "/pkg.Svc/Get", later).is_ok());
        assert_eq!(l.buckets(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_policy_s_limits_apply_from_its_first_call() {
        let shared = SharedPolicy::new(Policy::from_toml(TEN_A_SECOND).unwrap());
        let l = Limiter::new(shared.clone(), "td");
        let alice = id("spiffe://td/operator/alice");
        let now = Instant::now();
        for _ in 0..3 {
            assert!(l.check(&alice, "/pkg.Svc/Get", now).is_ok());
        }
        assert!(l.check(&alice, "/pkg.Svc/Get", now).is_err());
        shared.store(Arc::new(
            Policy::from_toml(&TEN_A_SECOND.replace("burst = 3", "burst = 6")).unwrap(),
        ));
        let allowed = (0..10)
            .filter(|_| l.check(&alice, "/pkg.Svc/Get", now).is_ok())
            .count();
        assert_eq!(allowed, 6, "the new burst, from a full bucket");
        shared.store(Arc::new(Policy::from_toml("").unwrap()));
        assert!(
            l.check(&alice, "/pkg.Svc/Get", now).is_ok(),
            "no limit any more"
        );
    }

    #[test]
    fn the_refusal_says_when_to_come_back() {
        let response = refusal(OverLimit {
            rule: 1,
            retry_after: Duration::from_micros(2_500),
        });
        let headers = response.headers();
        assert_eq!(headers.get("grpc-status").unwrap(), "8");
        assert_eq!(headers.get(crate::client::PUSHBACK_HEADER).unwrap(), "3");
    }
}
