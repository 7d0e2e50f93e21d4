//! Waiting in tests for a watched value to satisfy a condition, with a bound
//! and a message that shows the last value seen.

use std::time::Duration;

use tokio::sync::watch;

/// Waits until `rx`'s value satisfies `pred`; panics after 10 s with `what`
/// and the last value (a failed wait is a failed test).
pub async fn until<T: Clone + std::fmt::Debug>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    pred: impl Fn(&T) -> bool,
) -> T {
    let waited = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match waited {
        Ok(Ok(value)) => value,
        Ok(Err(_)) => panic!("the watch closed while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}; last: {:?}", *rx.borrow()),
    }
}
