//! What may be retried: a request that never reached a server, or a method
//! whose proto says `NO_SIDE_EFFECTS` or `IDEMPOTENT`; how many retries the
//! budget allows (at most 20% of requests plus 10 per second), so retries
//! cannot multiply an outage; and when a server asks to be left alone
//! (`grpc-retry-pushback-ms`).

use std::collections::HashSet;
use std::time::Duration;

use prost::Message;
use prost_types::FileDescriptorSet;
use prost_types::method_options::IdempotencyLevel;
use tower::retry::budget::{Budget, TpsBudget};

/// The methods that are safe to repeat, read from descriptor sets.
#[derive(Debug, Clone, Default)]
pub struct Idempotency {
    safe: HashSet<String>,
}

impl Idempotency {
    /// Reads every method's `idempotency_level` from encoded descriptor sets.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut safe = HashSet::new();
        for bytes in sets {
            let set = FileDescriptorSet::decode(*bytes)?;
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = service.name.unwrap_or_default();
                    for method in service.method {
                        let level = method.options.as_ref().map(|o| o.idempotency_level());
                        if matches!(
                            level,
                            Some(IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent)
                        ) {
                            safe.insert(format!(
                                "/{package}.{name}/{}",
                                method.name.unwrap_or_default()
                            ));
                        }
                    }
                }
            }
        }
        Ok(Self { safe })
    }

    /// Whether `path` (`/package.Service/Method`) may be repeated.
    pub fn is_safe(&self, path: &str) -> bool {
        self.safe.contains(path)
    }
}

/// The metadata key of a server's push-back (a `HeaderName`: the client
/// looks for it on every response, hashed without being parsed).
pub const PUSHBACK_HEADER: tonic::codegen::http::HeaderName =
    tonic::codegen::http::HeaderName::from_static("grpc-retry-pushback-ms");

/// What a server's push-back asks of a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Retry no sooner than this.
    After(Duration),
    /// Do not retry (a negative or unreadable value, as gRPC defines it).
    Never,
}

/// The push-back in a response's metadata, if it has one.
pub fn pushback_in(headers: &tonic::codegen::http::HeaderMap) -> Option<Pushback> {
    let value = headers.get(PUSHBACK_HEADER)?;
    Some(
        match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms.unsigned_abs())),
            _ => Pushback::Never,
        },
    )
}

/// The retry budget shared by every call of a channel.
#[derive(Debug)]
pub struct RetryBudget(TpsBudget);

impl RetryBudget {
    /// 20% of requests over a 10 s window, plus 10 retries per second.
    pub fn standard() -> Self {
        Self::new(0.2, 10)
    }

    /// `percent` of requests plus `min_per_sec` retries per second.
    pub fn new(percent: f32, min_per_sec: u32) -> Self {
        Self(TpsBudget::new(
            Duration::from_secs(10),
            min_per_sec,
            percent,
        ))
    }

    /// A request was made.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

/// Whether a transport error shows the request was never written: the
/// connection was refused or failed before use, or HTTP/2 refused the stream
/// (a GOAWAY from a draining server).
pub fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        let text = format!("{e:?}");
        if text.contains("ConnectError")
            || text.contains("REFUSED_STREAM")
            || text.contains("Connect,")
        {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_back_is_a_delay_or_a_refusal() {
        use tonic::codegen::http::{HeaderMap, HeaderValue};
        let mut headers = HeaderMap::new();
        assert_eq!(pushback_in(&headers), None);
        for (value, expected) in [
            ("250", Pushback::After(Duration::from_millis(250))),
            ("0", Pushback::After(Duration::ZERO)),
            ("-1", Pushback::Never),
            ("soon", Pushback::Never),
            ("99999999999999999999", Pushback::Never),
        ] {
            headers.insert(PUSHBACK_HEADER, HeaderValue::from_static(value));
            assert_eq!(pushback_in(&headers), Some(expected), "{value}");
        }
    }

    #[test]
    fn the_budget_allows_its_share_of_requests_and_no_more() {
        let budget = RetryBudget::new(0.2, 1);
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..100).take_while(|_| budget.withdraw()).count();
        // 20% of 100 requests, plus the floor of 1 a second over the 10 s
        // window.
        assert!((20..=30).contains(&allowed), "{allowed} retries allowed");
        assert!(!budget.withdraw(), "the budget is spent");
        budget.deposit();
        budget.deposit();
        budget.deposit();
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw(), "five more requests earn one retry");
    }
}
