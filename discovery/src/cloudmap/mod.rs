//! The Cloud Map backend: registration and custom health on the control
//! plane, and quota-aware polling of the data plane for resolution.

mod api;
mod client;
mod poller;
#[cfg(test)]
mod poller_tests;
mod registry;
mod resolver;

pub use api::{CallCounts, DiscoverApi, MAX_RESULTS, SdkApi, endpoint_from_attributes};
pub use client::{ClientOptions, build_client, shared_config};
pub use poller::PollConfig;
pub use registry::{CloudMapRegistry, MAX_ATTRIBUTES, RegistrationMode};
pub use resolver::CloudMapResolver;

use std::sync::Arc;

use aws_sdk_servicediscovery::Client;

use crate::error::DiscoveryError;
use crate::traits::{Registry, Resolver};
use crate::types::{Filter, Health, Registration, Snapshot};

/// Cloud Map discovery for one HTTP namespace: a registry and a resolver
/// sharing one SDK client and one set of call counters.
#[derive(Debug, Clone)]
pub struct CloudMap {
    client: Client,
    registry: Arc<CloudMapRegistry>,
    resolver: Arc<CloudMapResolver<SdkApi>>,
    counts: Arc<CallCounts>,
}

impl CloudMap {
    /// Whether the platform registers instances (ECS service registries)
    /// rather than the instances themselves.
    pub fn registers_externally(&self) -> bool {
        self.registry.mode() == RegistrationMode::External
    }

    /// Connects to `namespace` (its name) with `options`.
    pub async fn connect(
        namespace: &str,
        options: &ClientOptions,
        mode: RegistrationMode,
        poll: PollConfig,
    ) -> Result<Self, DiscoveryError> {
        if namespace.is_empty() {
            return Err(DiscoveryError::InvalidSetting {
                setting: "cloudmap://".into(),
                reason: "names no namespace".into(),
            });
        }
        let client = build_client(options).await;
        let counts = Arc::new(CallCounts::default());
        let api = Arc::new(SdkApi::new(
            client.clone(),
            namespace.to_owned(),
            counts.clone(),
        ));
        Ok(Self {
            registry: Arc::new(CloudMapRegistry::new(
                client.clone(),
                namespace.to_owned(),
                mode,
                counts.clone(),
            )),
            resolver: Arc::new(CloudMapResolver::new(api, poll)),
            client,
            counts,
        })
    }

    /// The SDK client, for administration (creating namespaces and services).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The calls made so far.
    pub fn counts(&self) -> &CallCounts {
        &self.counts
    }

    /// The registry half.
    pub fn registry(&self) -> &CloudMapRegistry {
        &self.registry
    }

    /// The resolver half.
    pub fn resolver(&self) -> &CloudMapResolver<SdkApi> {
        &self.resolver
    }
}

impl Registry for CloudMap {
    async fn register(&self, registration: &Registration) -> Result<(), DiscoveryError> {
        self.registry.register(registration).await
    }

    async fn set_health(
        &self,
        service: &str,
        id: &str,
        health: Health,
    ) -> Result<(), DiscoveryError> {
        self.registry.set_health(service, id, health).await
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        self.registry.deregister(service, id).await
    }
}

impl Resolver for CloudMap {
    fn watch(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<tokio::sync::watch::Receiver<Snapshot>, DiscoveryError> {
        self.resolver.watch(service, filter)
    }
}
