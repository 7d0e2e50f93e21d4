//! The retry bound across hops: every attempt says how many retries were
//! already spent on the path that led to it (`weft-retries`, and gRPC's own
//! `grpc-previous-rpc-attempts` from other clients); this layer makes that
//! count current while the handler runs, and the mesh client then retries
//! the handler's own calls only within what the chain has left (see
//! `ClientOptions::chain_retries`). A chain of three hops with three
//! attempts each cannot turn one call into 27.

use std::future::Future;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tower::{Layer, Service};

use crate::server::scoped::MaybeScoped;

/// The metadata key carrying the retries spent on an attempt's path (a
/// `HeaderName`, so a lookup on every call hashes it without parsing it).
pub const RETRIES_HEADER: http::HeaderName = http::HeaderName::from_static("weft-retries");
/// gRPC's key for an attempt's number less one, sent by gRPC clients that
/// retry (and by Weft's, for them).
pub const PREVIOUS_ATTEMPTS_HEADER: http::HeaderName =
    http::HeaderName::from_static("grpc-previous-rpc-attempts");
/// The most a caller's count is taken at: any count at or above the bound
/// means "no retries left", and a larger number means nothing more.
const MOST: u32 = 1_000;

tokio::task_local! {
    static SPENT: u32;
}

/// The retries spent on the path of the call being handled on this task:
/// zero outside a call, or for a first attempt made by a first caller.
pub fn current_retries_spent() -> u32 {
    SPENT.try_with(|n| *n).unwrap_or(0)
}

/// Runs `future` as if handling a call whose path spent `spent` retries
/// (for handlers that spawn work, and for tests).
pub async fn with_retries_spent<F: Future>(spent: u32, future: F) -> F::Output {
    SPENT.scope(spent, future).await
}

/// The retries spent on the path of an incoming call, from its metadata:
/// the larger of Weft's count and gRPC's previous attempts; unreadable
/// values count as none.
pub fn spent_in(headers: &http::HeaderMap) -> u32 {
    let read = |key: http::HeaderName| {
        headers
            .get(key)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
            .min(MOST)
    };
    read(RETRIES_HEADER).max(read(PREVIOUS_ATTEMPTS_HEADER))
}

/// Makes each incoming call's spent retries current while its handler runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetriesLayer;

impl<S> Layer<S> for RetriesLayer {
    type Service = Retries<S>;

    fn layer(&self, inner: S) -> Retries<S> {
        Retries { inner }
    }
}

/// See [`RetriesLayer`].
#[derive(Debug, Clone)]
pub struct Retries<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Retries<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MaybeScoped<u32, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let spent = spent_in(request.headers());
        let future = self.inner.call(request);
        // A first attempt, the common case, runs as it is.
        if spent == 0 {
            MaybeScoped::Plain { future }
        } else {
            MaybeScoped::Scoped {
                future: SPENT.scope(spent, future),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_the_larger_of_both_keys_and_bounded() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(spent_in(&headers), 0);
        headers.insert(RETRIES_HEADER, http::HeaderValue::from_static("2"));
        assert_eq!(spent_in(&headers), 2);
        headers.insert(
            PREVIOUS_ATTEMPTS_HEADER,
            http::HeaderValue::from_static("3"),
        );
        assert_eq!(spent_in(&headers), 3);
        headers.insert(
            RETRIES_HEADER,
            http::HeaderValue::from_static("99999999999"),
        );
        assert_eq!(spent_in(&headers), 3, "an unreadable count is none");
        headers.insert(RETRIES_HEADER, http::HeaderValue::from_static("4000000"));
        assert_eq!(spent_in(&headers), MOST);
        headers.insert(RETRIES_HEADER, http::HeaderValue::from_static("-1"));
        assert_eq!(spent_in(&headers), 3);
    }

    #[tokio::test]
    async fn the_count_is_current_only_inside_the_scope() {
        assert_eq!(current_retries_spent(), 0);
        assert_eq!(
            with_retries_spent(2, async { current_retries_spent() }).await,
            2
        );
    }
}
