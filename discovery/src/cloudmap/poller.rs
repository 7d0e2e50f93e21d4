//! The poller behind every Cloud Map watch: cheap change detection with
//! `DiscoverInstancesRevision`, a slower full `DiscoverInstances` (health flips
//! do not change the revision), jitter on every period, exponential backoff on
//! errors and throttling, and the last known good endpoints kept on any error.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::api::DiscoverApi;
use crate::backoff::{Backoff, jittered};
use crate::error::DiscoveryError;
use crate::types::{Filter, Snapshot};

/// The poller's timing.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// How often to ask whether the revision changed.
    pub revision_period: Duration,
    /// How often to fetch the instances whatever the revision says.
    pub full_refresh_period: Duration,
    /// ± fraction applied to every period.
    pub jitter: f64,
    /// First delay after an error (grows ×2 up to `max_backoff`).
    pub error_backoff: Duration,
    /// First delay after throttling (grows ×2 up to `max_backoff`).
    pub throttle_backoff: Duration,
    /// The longest delay between attempts.
    pub max_backoff: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            revision_period: Duration::from_secs(5),
            full_refresh_period: Duration::from_secs(30),
            jitter: 0.2,
            error_backoff: Duration::from_secs(1),
            throttle_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(120),
        }
    }
}

/// Polls `service` until every receiver of `tx` is gone.
pub async fn poll<A: DiscoverApi>(
    api: Arc<A>,
    service: String,
    filter: Filter,
    config: PollConfig,
    tx: watch::Sender<Snapshot>,
) {
    let mut revision: Option<i64> = None;
    let mut next_full = Instant::now();
    let mut errors = Backoff::new(config.error_backoff, 2.0, config.max_backoff, config.jitter);
    let mut throttles = Backoff::new(
        config.throttle_backoff,
        2.0,
        config.max_backoff,
        config.jitter,
    );
    loop {
        let outcome = step(
            &*api,
            &service,
            &filter,
            &mut revision,
            &mut next_full,
            &config,
            &tx,
        )
        .await;
        let delay = match outcome {
            Ok(()) => {
                errors.reset();
                throttles.reset();
                jittered(config.revision_period, config.jitter)
            }
            Err(e) => {
                let delay = if e.is_throttling() {
                    throttles.next_delay()
                } else {
                    errors.next_delay()
                };
                tracing::warn!(%service, error = %e, retry_in = ?delay, "Cloud Map poll failed; keeping the last known endpoints");
                tx.send_modify(|s| s.last_error = Some(e.to_string().into()));
                // After an error, the next success must be a full fetch: the
                // revision may have moved while we could not see it.
                revision = None;
                delay.max(config.revision_period.min(config.error_backoff))
            }
        };
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One round: a full fetch when due (or when the revision moved), else a
/// revision check that only confirms the endpoints are current.
async fn step<A: DiscoverApi>(
    api: &A,
    service: &str,
    filter: &Filter,
    revision: &mut Option<i64>,
    next_full: &mut Instant,
    config: &PollConfig,
    tx: &watch::Sender<Snapshot>,
) -> Result<(), DiscoveryError> {
    let now = Instant::now();
    if revision.is_some() && now < *next_full {
        let current = api.revision(service).await?;
        // Compared for equality, not order: a revision that goes down (an
        // emulator does this) is a change too.
        if Some(current) == *revision {
            tx.send_if_modified(|s| {
                s.fetched_at = Some(Instant::now());
                // Watchers hear of it only if an error is thereby cleared.
                s.last_error.take().is_some()
            });
            return Ok(());
        }
    }
    let (endpoints, new_revision) = api.discover(service, filter).await?;
    *revision = match new_revision {
        Some(r) => Some(r),
        // Older endpoints omit the revision from DiscoverInstances; ask for it
        // (a change racing this call shows at the next full refresh at worst).
        None => Some(api.revision(service).await?),
    };
    *next_full = Instant::now() + jittered(config.full_refresh_period, config.jitter);
    tx.send_if_modified(|s| {
        let changed =
            *s.endpoints != *endpoints || s.last_error.is_some() || s.fetched_at.is_none();
        if *s.endpoints != *endpoints {
            s.endpoints = endpoints.into();
        }
        s.fetched_at = Some(Instant::now());
        s.last_error = None;
        changed
    });
    Ok(())
}
