//! The Prometheus endpoint: `GET /metrics` on its own listener answers the
//! process's metrics in the text format (OpenMetrics); `GET /ready` answers
//! 200 while the service is ready (what grpc.health.v1 says of it) and 503
//! otherwise, for load balancers that cannot speak gRPC over mTLS; `GET
//! /live` answers the liveness entry the same way, for container health
//! checks that hold no certificate; anything else 404. Kept off the gRPC port so scrapers and load balancer health
//! checks need no client certificate.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use weft_mesh::Metrics;

/// The content type of the OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the probes answer, kept by the server.
#[derive(Debug, Default)]
pub struct Probes {
    /// Ready now (false once the drain begins).
    pub ready: AtomicBool,
    /// Ready at least once since start.
    pub alive: AtomicBool,
}

/// Answers scrapes and probes on `listener` until the task is aborted.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, probes: Arc<Probes>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let probes = probes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let state = (
                    probes.ready.load(Ordering::Relaxed),
                    probes.alive.load(Ordering::Relaxed),
                );
                async move { Ok::<_, Infallible>(answer(&request, &metrics, state)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn answer<B>(
    request: &hyper::Request<B>,
    metrics: &Metrics,
    (ready, alive): (bool, bool),
) -> hyper::Response<Full<Bytes>> {
    let text = |status, body: &'static [u8]| {
        let mut r = hyper::Response::new(Full::new(Bytes::from_static(body)));
        *r.status_mut() = status;
        r
    };
    let get = request.method() == hyper::Method::GET;
    let mut response = match request.uri().path() {
        "/metrics" if get => {
            let mut r = hyper::Response::new(Full::new(Bytes::from(metrics.render())));
            if let Ok(value) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
            }
            r
        }
        "/ready" if get && ready => text(hyper::StatusCode::OK, b"SERVING\n"),
        "/ready" if get => text(hyper::StatusCode::SERVICE_UNAVAILABLE, b"NOT_SERVING\n"),
        "/live" if get && alive => text(hyper::StatusCode::OK, b"SERVING\n"),
        "/live" if get => text(hyper::StatusCode::SERVICE_UNAVAILABLE, b"NOT_SERVING\n"),
        _ => text(hyper::StatusCode::NOT_FOUND, b"not found\n"),
    };
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> hyper::Request<()> {
        hyper::Request::get(path).body(()).unwrap()
    }

    #[test]
    fn ready_and_live_answer_the_services_state() {
        let metrics = Metrics::new();
        assert_eq!(answer(&get("/ready"), &metrics, (true, true)).status(), 200);
        assert_eq!(
            answer(&get("/ready"), &metrics, (false, true)).status(),
            503
        );
        // Alive while not ready now (a database failover): still live.
        assert_eq!(answer(&get("/live"), &metrics, (false, true)).status(), 200);
        assert_eq!(
            answer(&get("/live"), &metrics, (false, false)).status(),
            503
        );
        let post = hyper::Request::post("/ready").body(()).unwrap();
        assert_eq!(answer(&post, &metrics, (true, true)).status(), 404);
    }

    #[test]
    fn metrics_are_served_and_other_paths_are_not() {
        let metrics = Metrics::new();
        let r = answer(&get("/metrics"), &metrics, (false, false));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(answer(&get("/"), &metrics, (true, true)).status(), 404);
        assert_eq!(
            answer(&get("/metrics/x"), &metrics, (true, true)).status(),
            404
        );
    }
}
