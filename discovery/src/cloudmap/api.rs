//! The Cloud Map calls a resolver makes, behind a trait so that the poller's
//! timing logic can be tested under a paused clock; [`SdkApi`] is the real
//! implementation over the AWS SDK.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_servicediscovery::types::{HealthStatus, HealthStatusFilter};

use crate::error::DiscoveryError;
use crate::types::{Endpoint, Filter};

/// The instance attribute Cloud Map keeps the IPv4 address in.
pub const ATTR_IPV4: &str = "AWS_INSTANCE_IPV4";
/// The instance attribute Cloud Map keeps the IPv6 address in.
pub const ATTR_IPV6: &str = "AWS_INSTANCE_IPV6";
/// The instance attribute Cloud Map keeps the port in.
pub const ATTR_PORT: &str = "AWS_INSTANCE_PORT";
/// The largest page DiscoverInstances returns.
pub const MAX_RESULTS: i32 = 1000;

/// The discovery calls of the data plane.
pub trait DiscoverApi: Send + Sync + 'static {
    /// `DiscoverInstancesRevision`: a number that changes when instances are
    /// added, removed or changed (not when their health flips).
    fn revision(&self, service: &str) -> impl Future<Output = Result<i64, DiscoveryError>> + Send;

    /// `DiscoverInstances` with the filter; returns the endpoints and the
    /// revision they belong to.
    fn discover(
        &self,
        service: &str,
        filter: &Filter,
    ) -> impl Future<Output = Result<(Vec<Endpoint>, Option<i64>), DiscoveryError>> + Send;
}

/// How many Cloud Map calls this process made, by kind.
#[derive(Debug, Default)]
pub struct CallCounts {
    /// DiscoverInstances.
    pub discover: AtomicU64,
    /// DiscoverInstancesRevision.
    pub revision: AtomicU64,
    /// Control-plane calls (register, deregister, health, lookups, operations).
    pub control: AtomicU64,
}

impl CallCounts {
    /// All calls so far.
    pub fn total(&self) -> u64 {
        self.discover.load(Ordering::Relaxed)
            + self.revision.load(Ordering::Relaxed)
            + self.control.load(Ordering::Relaxed)
    }
}

/// The data-plane calls over the AWS SDK, for one namespace.
#[derive(Debug, Clone)]
pub struct SdkApi {
    client: Client,
    namespace: String,
    counts: Arc<CallCounts>,
}

impl SdkApi {
    /// Calls into `namespace` (its name, not its id) with `client`.
    pub fn new(client: Client, namespace: String, counts: Arc<CallCounts>) -> Self {
        Self {
            client,
            namespace,
            counts,
        }
    }
}

impl DiscoverApi for SdkApi {
    async fn revision(&self, service: &str) -> Result<i64, DiscoveryError> {
        self.counts.revision.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client
            .discover_instances_revision()
            .namespace_name(&self.namespace)
            .service_name(service)
            .send()
            .await
            .map_err(sdk_error)?;
        out.instances_revision().ok_or_else(|| {
            DiscoveryError::Backend("DiscoverInstancesRevision returned no revision".into())
        })
    }

    async fn discover(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<(Vec<Endpoint>, Option<i64>), DiscoveryError> {
        self.counts.discover.fetch_add(1, Ordering::Relaxed);
        let to_map = |m: &BTreeMap<String, String>| -> Option<HashMap<String, String>> {
            (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        };
        let out = self
            .client
            .discover_instances()
            .namespace_name(&self.namespace)
            .service_name(service)
            .max_results(MAX_RESULTS)
            .health_status(HealthStatusFilter::HealthyOrElseAll)
            .set_query_parameters(to_map(&filter.required))
            .set_optional_parameters(to_map(&filter.preferred))
            .send()
            .await
            .map_err(sdk_error)?;
        let mut endpoints: Vec<Endpoint> = out
            .instances()
            .iter()
            .filter_map(|i| {
                let attrs = i.attributes()?;
                let id = i.instance_id()?.to_owned();
                let endpoint = endpoint_from_attributes(id, attrs, i.health_status() != Some(&HealthStatus::Unhealthy));
                if endpoint.is_none() {
                    tracing::warn!(instance = ?i.instance_id(), "Cloud Map instance without a usable address and port");
                }
                endpoint
            })
            .collect();
        endpoints.sort();
        Ok((endpoints, out.instances_revision()))
    }
}

/// Builds an endpoint from Cloud Map attributes: the address from
/// `AWS_INSTANCE_IPV4` (or `_IPV6`) and `AWS_INSTANCE_PORT`; every attribute
/// not starting with `AWS_` is kept.
pub fn endpoint_from_attributes(
    id: String,
    attrs: &HashMap<String, String>,
    healthy: bool,
) -> Option<Endpoint> {
    let ip: IpAddr = attrs
        .get(ATTR_IPV4)
        .or_else(|| attrs.get(ATTR_IPV6))?
        .parse()
        .ok()?;
    let port: u16 = attrs.get(ATTR_PORT)?.parse().ok()?;
    Some(Endpoint {
        id,
        addr: SocketAddr::new(ip, port),
        attributes: attrs
            .iter()
            .filter(|(k, _)| !k.starts_with("AWS_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        healthy,
    })
}

/// Sorts SDK errors: throttling (back off), missing namespace or service,
/// and everything else.
pub fn sdk_error<E, R>(e: SdkError<E, R>) -> DiscoveryError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or_default().to_owned();
    let message = DisplayErrorContext(&e).to_string();
    let throttled = matches!(
        code.as_str(),
        "RequestLimitExceeded" | "ThrottlingException" | "Throttling" | "TooManyRequestsException"
    ) || message.contains("429");
    if throttled {
        DiscoveryError::Throttled(message)
    } else if code == "NamespaceNotFound" || code == "ServiceNotFound" {
        DiscoveryError::NotFound {
            kind: if code == "NamespaceNotFound" {
                "namespace"
            } else {
                "service"
            },
            name: e.message().unwrap_or_default().to_owned(),
        }
    } else {
        DiscoveryError::Backend(message)
    }
}
