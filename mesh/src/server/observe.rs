//! The server side's observation middleware: a span per call (continuing
//! the caller's W3C trace), and the golden metrics per service, method and
//! caller identity (requests, responses by gRPC status, latency to the end
//! of the response). It sits outside authorization, so refused calls are
//! seen too: label sets and span names come only from the methods the
//! server serves, and every other path is `unknown`, so no caller can grow
//! them (or a trace name) without bound.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use tower::{Layer, Service};
use tracing::Instrument;

use crate::incoming::PeerInfo;
use crate::metrics::{Metrics, ServerCall, ServerResult, code_name, split_path};
use crate::observed_body::observe_response;
use crate::trace_context::{continue_trace, record_status};

/// What a path that is not a served method is labelled as.
pub const UNKNOWN: &str = "unknown";

/// How many (method, caller) pairs keep their metric handles: the label
/// sets are bounded already (served methods, identities the CA issued), so
/// this only keeps a mesh of very many callers from growing the cache
/// without limit; past it, calls look their handles up each time.
const MAX_CACHED: usize = 4096;

/// The metric handles of one method for one caller, looked up once: the
/// hot path then bumps atomics instead of building and hashing label sets.
#[derive(Debug)]
struct CallHandles {
    call: ServerCall,
    requests: Counter,
    latency: Histogram,
    ok: Counter,
}

impl CallHandles {
    fn new(metrics: &Metrics, call: ServerCall) -> Self {
        let ok = ServerResult {
            grpc_service: call.grpc_service.clone(),
            grpc_method: call.grpc_method.clone(),
            peer: call.peer.clone(),
            grpc_code: code_name(tonic::Code::Ok).to_owned(),
        };
        Self {
            requests: metrics.server_requests.get_or_create(&call).clone(),
            latency: metrics.server_latency.get_or_create(&call).clone(),
            ok: metrics.server_responses.get_or_create(&ok).clone(),
            call,
        }
    }
}

/// One path's handles, by caller.
type ByCaller = HashMap<Arc<str>, Arc<CallHandles>>;

/// Handles by path (a served one, or [`UNKNOWN`]) and caller.
#[derive(Debug, Default)]
struct HandleCache {
    by_path: RwLock<HashMap<String, ByCaller>>,
}

impl HandleCache {
    fn get(&self, metrics: &Metrics, path: &str, peer: &Arc<str>) -> Arc<CallHandles> {
        if let Ok(cache) = self.by_path.read()
            && let Some(found) = cache.get(path).and_then(|p| p.get(peer))
        {
            return found.clone();
        }
        let (grpc_service, grpc_method) = if path == UNKNOWN {
            (UNKNOWN.to_owned(), UNKNOWN.to_owned())
        } else {
            split_path(path)
        };
        let handles = Arc::new(CallHandles::new(
            metrics,
            ServerCall {
                grpc_service,
                grpc_method,
                peer: peer.to_string(),
            },
        ));
        if let Ok(mut cache) = self.by_path.write() {
            let cached: usize = cache.values().map(HashMap::len).sum();
            if cached < MAX_CACHED {
                cache
                    .entry(path.to_owned())
                    .or_default()
                    .insert(peer.clone(), handles.clone());
            }
        }
        handles
    }
}

/// Observes every call to the services inside it.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    /// The paths (`/package.Service/Method`) labelled as themselves.
    served: Arc<HashSet<String>>,
    /// Their metric handles, by caller.
    handles: Arc<HandleCache>,
}

impl ObserveLayer {
    /// Records into `metrics`, labelling calls to `served` paths
    /// (`/package.Service/Method`, see [`served_paths`]) by service and
    /// method and every other call `unknown`.
    pub fn new(metrics: Arc<Metrics>, served: HashSet<String>) -> Self {
        Self {
            metrics,
            served: Arc::new(served),
            handles: Arc::default(),
        }
    }
}

/// The paths of every method of `services` (full names, such as
/// `weft.inventory.v1.InventoryService`) described in `descriptor_sets`
/// (encoded `FileDescriptorSet`s); a set that does not decode adds nothing.
pub fn served_paths(descriptor_sets: &[&[u8]], services: &[&str]) -> HashSet<String> {
    use prost::Message;
    let mut out = HashSet::new();
    for set in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                if services.contains(&full.as_str()) {
                    out.extend(
                        service
                            .method
                            .iter()
                            .map(|m| format!("/{full}/{}", m.name())),
                    );
                }
            }
        }
    }
    out
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            served: self.served.clone(),
            handles: self.handles.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    served: Arc<HashSet<String>>,
    handles: Arc<HandleCache>,
}

impl<S, B> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path();
        let name = if self.served.contains(path) {
            path.trim_start_matches('/')
        } else {
            UNKNOWN
        };
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .map_or_else(|| Arc::<str>::from("unauthenticated"), |p| p.label.clone());
        let handles = self.handles.get(
            &self.metrics,
            if name == UNKNOWN { UNKNOWN } else { path },
            &peer,
        );
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %handles.call.grpc_service,
            rpc.method = %handles.call.grpc_method,
            peer = %peer,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        continue_trace(&span, request.headers());
        handles.requests.inc();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            let response = future.await?;
            Ok(observe_response(response, move |code: tonic::Code| {
                let elapsed = started.elapsed();
                span.in_scope(|| {
                    tracing::debug!(
                        grpc_code = code_name(code),
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        "call finished"
                    );
                });
                record_status(&span, code);
                handles.latency.observe(elapsed.as_secs_f64());
                if code == tonic::Code::Ok {
                    handles.ok.inc();
                } else {
                    let call = &handles.call;
                    metrics
                        .server_responses
                        .get_or_create(&ServerResult {
                            grpc_service: call.grpc_service.clone(),
                            grpc_method: call.grpc_method.clone(),
                            peer: call.peer.clone(),
                            grpc_code: code_name(code).to_owned(),
                        })
                        .inc();
                }
                drop(span);
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_looked_up_once_per_method_and_caller_and_the_cache_is_bounded() {
        let metrics = Metrics::new();
        let cache = HandleCache::default();
        let alice: Arc<str> = Arc::from("spiffe://td/service/alice");
        let bob: Arc<str> = Arc::from("spiffe://td/service/bob");
        let first = cache.get(&metrics, "/pkg.S/M", &alice);
        assert!(Arc::ptr_eq(
            &first,
            &cache.get(&metrics, "/pkg.S/M", &alice)
        ));
        assert!(!Arc::ptr_eq(&first, &cache.get(&metrics, "/pkg.S/M", &bob)));
        assert_eq!(
            (
                first.call.grpc_service.as_str(),
                first.call.grpc_method.as_str()
            ),
            ("pkg.S", "M")
        );
        let unknown = cache.get(&metrics, UNKNOWN, &alice);
        assert_eq!(unknown.call.grpc_method, UNKNOWN);
        // The handles are the registry's series: bumping one shows there.
        first.requests.inc();
        let text = metrics.render();
        assert!(
            text.contains(
                r#"weft_server_requests_total{grpc_service="pkg.S",grpc_method="M",peer="spiffe://td/service/alice"} 1"#
            ),
            "{text}"
        );
        // Past the bound, handles still work but are not kept.
        for i in 0..MAX_CACHED {
            cache.get(
                &metrics,
                "/pkg.S/M",
                &Arc::from(format!("spiffe://td/service/s{i}")),
            );
        }
        let late: Arc<str> = Arc::from("spiffe://td/service/late");
        let once = cache.get(&metrics, "/pkg.S/M", &late);
        assert!(!Arc::ptr_eq(&once, &cache.get(&metrics, "/pkg.S/M", &late)));
        let kept: usize = cache
            .by_path
            .read()
            .unwrap()
            .values()
            .map(HashMap::len)
            .sum();
        assert_eq!(kept, MAX_CACHED);
    }
}
