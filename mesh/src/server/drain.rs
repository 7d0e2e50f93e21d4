//! Graceful shutdown for a mesh server, in the order that lets clients move
//! away before anything fails: report NOT_SERVING, deregister from discovery,
//! keep serving for a drain period while clients notice, then stop accepting
//! (HTTP/2 GOAWAY) and give in-flight calls a bounded time to finish.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// The timings of a drain.
#[derive(Debug, Clone, Copy)]
pub struct DrainConfig {
    /// How long to keep serving after reporting NOT_SERVING and
    /// deregistering, so clients (health watchers, discovery pollers) move away.
    pub drain_period: Duration,
    /// How long in-flight calls may take after the listener closes.
    pub grace_period: Duration,
    /// The most time telling others this instance is leaving (health,
    /// discovery) may take before the drain period starts: a slow or
    /// unreachable discovery backend must not push shutdown past the
    /// platform's stop timeout.
    pub notify_budget: Duration,
}

impl DrainConfig {
    /// The longest a shutdown can take from the signal to the server's
    /// return: the notification budget, the drain period and the grace
    /// period. A platform's stop timeout (ECS `stopTimeout`) must exceed it.
    pub fn worst_case(&self) -> Duration {
        self.notify_budget + self.drain_period + self.grace_period
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            drain_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(20),
            notify_budget: Duration::from_secs(5),
        }
    }
}

/// Runs `serve` (which must stop accepting when the future it is given
/// resolves) through the drain protocol when `shutdown` resolves:
/// `on_drain` runs first (health NOT_SERVING, deregistration) for at most the
/// notification budget, then the drain
/// period passes with the server still serving, then `serve`'s own shutdown
/// (GOAWAY, in-flight calls) gets at most the grace period. Returns `serve`'s
/// result, or `Ok(())` when the grace period ran out.
pub async fn serve_with_drain<'a, S, E, D>(
    config: DrainConfig,
    shutdown: impl Future<Output = ()> + Send + 'a,
    on_drain: D,
    serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>) -> S,
) -> Result<(), E>
where
    S: Future<Output = Result<(), E>>,
    D: Future<Output = ()> + Send + 'a,
{
    let (closing_tx, mut closing_rx) = watch::channel(false);
    let stop_accepting = Box::pin(async move {
        shutdown.await;
        tracing::info!(drain = ?config.drain_period, "draining: clients are told to move away");
        if tokio::time::timeout(config.notify_budget, on_drain)
            .await
            .is_err()
        {
            tracing::warn!(budget = ?config.notify_budget, "telling discovery took too long; draining anyway");
        }
        tokio::time::sleep(config.drain_period).await;
        tracing::info!(grace = ?config.grace_period, "closing the listener; finishing in-flight calls");
        let _ = closing_tx.send(true);
    });
    let serving = serve(stop_accepting);
    tokio::pin!(serving);
    let grace_over = async {
        if closing_rx.wait_for(|c| *c).await.is_err() {
            // The server stopped before shutdown began: nothing to bound.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(config.grace_period).await;
    };
    tokio::select! {
        result = &mut serving => result,
        () = grace_over => {
            tracing::warn!("grace period over with calls still in flight; stopping anyway");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    fn config() -> DrainConfig {
        DrainConfig {
            drain_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(20),
            notify_budget: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drains_then_stops_accepting_then_waits_for_in_flight_calls() {
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let result: Result<(), ()> = serve_with_drain(
            config(),
            tokio::time::sleep(Duration::from_secs(1)),
            async move {
                l1.lock()
                    .unwrap()
                    .push(("drain", start.elapsed().as_secs()))
            },
            move |stop_accepting| async move {
                stop_accepting.await;
                l2.lock()
                    .unwrap()
                    .push(("closed", start.elapsed().as_secs()));
                // In-flight calls take 3 s more.
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            },
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(*log.lock().unwrap(), [("drain", 1), ("closed", 6)]);
        assert_eq!(start.elapsed().as_secs(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_outlast_the_grace_period_are_cut_off() {
        let start = Instant::now();
        let result: Result<(), ()> =
            serve_with_drain(config(), async {}, async {}, |stop_accepting| async move {
                stop_accepting.await;
                std::future::pending::<()>().await;
                Ok(())
            })
            .await;
        assert!(result.is_ok());
        assert_eq!(start.elapsed().as_secs(), 25, "drain 5 s + grace 20 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_notification_that_hangs_is_cut_at_its_budget() {
        let start = Instant::now();
        let result: Result<(), ()> = serve_with_drain(
            config(),
            async {},
            std::future::pending::<()>(),
            |stop_accepting| async move {
                stop_accepting.await;
                std::future::pending::<()>().await;
                Ok(())
            },
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(start.elapsed(), config().worst_case());
        assert_eq!(
            start.elapsed().as_secs(),
            30,
            "notify 5 s + drain 5 s + grace 20 s"
        );
    }
}
