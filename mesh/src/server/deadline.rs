//! Deadline propagation: a server layer reads the incoming call's
//! `grpc-timeout` and makes the deadline current for the handler, and the
//! mesh client sends what is left of it on every call the handler makes, so a
//! deadline set by the first caller holds however many hops away.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::server::scoped::MaybeScoped;

/// gRPC's deadline key, as a `HeaderName`: read (server and client) and
/// written (client) on every call, hashed without being parsed.
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being handled on this task, if it has one.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `future` with `deadline` current (for handlers that spawn work, and
/// for tests).
pub async fn with_deadline<F: Future>(deadline: Instant, future: F) -> F::Output {
    DEADLINE.scope(deadline, future).await
}

/// Parses a `grpc-timeout` value: digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a timeout for `grpc-timeout` (at most 8 digits, as the spec asks).
pub fn format_grpc_timeout(timeout: Duration) -> String {
    let micros = timeout.as_micros();
    if micros < 100_000_000 {
        format!("{}u", micros.max(1))
    } else if timeout.as_millis() < 100_000_000 {
        format!("{}m", timeout.as_millis())
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// Makes each incoming call's deadline current while its handler runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MaybeScoped<Instant, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let future = self.inner.call(request);
        match timeout {
            Some(t) => MaybeScoped::Scoped {
                future: DEADLINE.scope(Instant::now() + t, future),
            },
            None => MaybeScoped::Plain { future },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_and_format() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "12", "1x", "123456789m", "-1m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(1500),
            Duration::from_secs(500_000),
        ] {
            let text = format_grpc_timeout(d);
            assert!(text.len() <= 9, "{text}");
            let back = parse_grpc_timeout(&text).unwrap();
            assert!(
                back <= d && d - back < Duration::from_secs(1),
                "{d:?} -> {text} -> {back:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_deadline_is_current_only_inside_the_scope() {
        assert_eq!(current_deadline(), None);
        let d = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            with_deadline(d, async { current_deadline() }).await,
            Some(d)
        );
    }
}
