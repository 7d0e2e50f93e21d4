//! The recovery loop: every instance looks for sagas that are due (a step
//! put off, or a driver that crashed and let its lease run out) and drives
//! them, a bounded number at a time.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::saga::Saga;

/// Runs until aborted.
pub async fn run(saga: Arc<Saga>) {
    let limit = saga.config().recovery_concurrency.max(1);
    let slots = Arc::new(Semaphore::new(limit));
    loop {
        let free = slots.available_permits();
        if free > 0 {
            match saga.store().due(i64::try_from(free).unwrap_or(1)).await {
                Ok(due) => {
                    for order_id in due {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let saga = saga.clone();
                        let span = tracing::info_span!("saga.resume", %order_id);
                        tokio::spawn(async move {
                            match saga.drive(&order_id).await {
                                Ok(order) => tracing::debug!(
                                    %order_id,
                                    step = order.step.as_str(),
                                    "recovery drove saga"
                                ),
                                Err(e) => {
                                    tracing::warn!(%order_id, error = %e, "recovery could not drive saga")
                                }
                            }
                            drop(permit);
                        }.instrument(span));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "recovery could not look for due sagas"),
            }
        }
        tokio::time::sleep(saga.config().recovery_every).await;
    }
}
