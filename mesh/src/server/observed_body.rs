//! A response body that reports how its call ended, for metrics and spans:
//! the gRPC status from the response headers (a trailers-only answer) or
//! from the trailers, once the body has been read to its end, failed, or
//! was dropped unread (the caller went away: CANCELLED).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::Code;

/// Called once with the call's final status.
pub type OnEnd = Box<dyn FnOnce(Code) + Send>;

/// Wraps `B`, calling `on_end` once the call's status is known.
pub struct Observed<B> {
    inner: B,
    header_code: Option<Code>,
    on_end: Option<OnEnd>,
}

impl<B> std::fmt::Debug for Observed<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("header_code", &self.header_code)
            .finish_non_exhaustive()
    }
}

/// The gRPC status in a header map, if there is one.
pub fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    // A `HeaderName` constant: looked up on every response, hashed without
    // being parsed.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// `response` with its body observed: `on_end` gets the call's status when
/// the body ends, fails or is dropped.
pub fn observe_response(
    response: http::Response<tonic::body::Body>,
    on_end: impl FnOnce(Code) + Send + 'static,
) -> http::Response<tonic::body::Body> {
    let (parts, body) = response.into_parts();
    let header_code = status_in(&parts.headers);
    let body = tonic::body::Body::new(Observed::new(body, header_code, Box::new(on_end)));
    http::Response::from_parts(parts, body)
}

impl<B> Observed<B> {
    /// Observes a response body whose headers carried `header_code`.
    pub fn new(inner: B, header_code: Option<Code>, on_end: OnEnd) -> Self {
        Self {
            inner,
            header_code,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, code: Code) {
        if let Some(on_end) = self.on_end.take() {
            on_end(code);
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_in(trailers).unwrap_or(Code::Unknown);
                    self.end(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Code::Unknown),
            Poll::Ready(None) => {
                // No trailers: the headers said it all (or nothing: OK is
                // never implicit in gRPC, but a bodiless answer is unknown).
                let code = self.header_code.unwrap_or(Code::Unknown);
                self.end(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // Dropped before its end: a trailers-only answer ends here; anything
        // else was abandoned by the reader.
        let code = self.header_code.unwrap_or(Code::Cancelled);
        self.end(code);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<Code>>>, OnEnd) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, Box::new(move |code| s.lock().unwrap().push(code)))
    }

    #[tokio::test]
    async fn reports_the_status_from_trailers_once() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let body = http_body_util::StreamBody::new(futures_util_stream(vec![
            Frame::data(bytes::Bytes::from_static(b"x")),
            Frame::trailers(trailers),
        ]));
        let (seen, on_end) = recorder();
        let observed = Observed::new(body, None, on_end);
        let _ = observed.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Code::NotFound]);
    }

    #[tokio::test]
    async fn a_trailers_only_answer_and_an_abandoned_body() {
        let (seen, on_end) = recorder();
        drop(Observed::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
            Some(Code::Unavailable),
            on_end,
        ));
        let (abandoned, on_end) = recorder();
        drop(Observed::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
            None,
            on_end,
        ));
        assert_eq!(*seen.lock().unwrap(), vec![Code::Unavailable]);
        assert_eq!(*abandoned.lock().unwrap(), vec![Code::Cancelled]);
    }

    fn futures_util_stream(
        frames: Vec<Frame<bytes::Bytes>>,
    ) -> impl futures_core::Stream<Item = Result<Frame<bytes::Bytes>, std::convert::Infallible>> + Unpin
    {
        tokio_stream::iter(frames.into_iter().map(Ok))
    }
}
