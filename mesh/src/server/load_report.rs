//! Load reports, ORCA-style: every response carries the server's current
//! utilization (0 to 1) in `weft-load-utilization`, so each client's
//! balancer can weigh it in the pick (see `EndpointState::load_reported`)
//! before latency shows the strain. What utilization means is the
//! service's to say: Weft's services report the larger of their process's
//! CPU use and their database pool's use, sampled every second.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tonic::codegen::http;
use tower::{Layer, Service};

/// The metadata key of a response's load report.
pub const LOAD_HEADER: http::HeaderName = http::HeaderName::from_static("weft-load-utilization");

/// The utilization a server reports, kept by whatever samples it.
#[derive(Debug)]
pub struct LoadGauge {
    /// In thousandths, from 0 to 1000.
    permille: AtomicU32,
    /// The header saying `permille`, made when it is set (about once a
    /// second) rather than formatted again for every response.
    header: ArcSwap<http::HeaderValue>,
}

impl Default for LoadGauge {
    fn default() -> Self {
        Self {
            permille: AtomicU32::new(0),
            header: ArcSwap::from_pointee(header_for(0)),
        }
    }
}

impl LoadGauge {
    /// Sets the utilization (clamped to 0–1).
    pub fn set(&self, utilization: f64) {
        let permille = (utilization.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.permille.store(permille, Ordering::Relaxed);
        self.header.store(Arc::new(header_for(permille)));
    }

    /// The utilization now.
    pub fn get(&self) -> f64 {
        f64::from(self.permille.load(Ordering::Relaxed)) / 1000.0
    }

    fn header(&self) -> http::HeaderValue {
        // A clone shares the value's bytes.
        http::HeaderValue::clone(&self.header.load())
    }
}

/// The header value of a utilization in thousandths: "0.457", "1.000".
fn header_for(permille: u32) -> http::HeaderValue {
    let permille = permille.min(1000);
    http::HeaderValue::from_str(&format!("{}.{:03}", permille / 1000, permille % 1000))
        .unwrap_or_else(|_| http::HeaderValue::from_static("0"))
}

/// A load report read from a response: the utilization, if the header is
/// there and says a number from 0 to 1.
pub fn load_in(headers: &http::HeaderMap) -> Option<f64> {
    let value: f64 = headers
        .get(LOAD_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (0.0..=1.0).contains(&value).then_some(value)
}

/// Stamps every response with the gauge's utilization.
#[derive(Debug, Clone)]
pub struct LoadReportLayer {
    gauge: Arc<LoadGauge>,
}

impl LoadReportLayer {
    /// Reports `gauge`.
    pub fn new(gauge: Arc<LoadGauge>) -> Self {
        Self { gauge }
    }
}

impl<S> Layer<S> for LoadReportLayer {
    type Service = LoadReport<S>;

    fn layer(&self, inner: S) -> LoadReport<S> {
        LoadReport {
            inner,
            gauge: self.gauge.clone(),
        }
    }
}

/// See [`LoadReportLayer`].
#[derive(Debug, Clone)]
pub struct LoadReport<S> {
    inner: S,
    gauge: Arc<LoadGauge>,
}

impl<S, B, R> Service<http::Request<B>> for LoadReport<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Stamped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Stamped {
            inner: self.inner.call(request),
            gauge: self.gauge.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response on its way, stamped with the utilization as it leaves
    /// (no allocation per call).
    pub struct Stamped<F> {
        #[pin]
        inner: F,
        gauge: Arc<LoadGauge>,
    }
}

impl<F, R, E> Future for Stamped<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(mut response)) => {
                response
                    .headers_mut()
                    .insert(LOAD_HEADER, this.gauge.header());
                Poll::Ready(Ok(response))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_written_and_read_between_0_and_1() {
        let gauge = LoadGauge::default();
        gauge.set(0.4567);
        let mut headers = http::HeaderMap::new();
        headers.insert(LOAD_HEADER, gauge.header());
        assert_eq!(headers.get(LOAD_HEADER).unwrap(), "0.457");
        assert_eq!(load_in(&headers), Some(0.457));
        gauge.set(7.0);
        headers.insert(LOAD_HEADER, gauge.header());
        assert_eq!(load_in(&headers), Some(1.0));
        for bad in ["-0.1", "1.5", "high", "NaN"] {
            headers.insert(LOAD_HEADER, http::HeaderValue::from_static(bad));
            assert_eq!(load_in(&headers), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn every_response_carries_the_report() {
        use tower::ServiceExt;
        let gauge = Arc::new(LoadGauge::default());
        gauge.set(0.25);
        let service =
            LoadReportLayer::new(gauge).layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(()))
            }));
        let response = service.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(load_in(response.headers()), Some(0.25));
    }
}
