//! The client half of the front door: one value that owns discovery, the
//! identity a process's calls present (or none, in plaintext development
//! meshes), the idempotency table of the contracts it was given and the
//! client options, and hands out a balanced channel to any service by name
//! in one line, which generated tonic clients take.

use std::collections::HashMap;
use std::sync::Arc;

use weft_discovery::{Discovery, Filter, Resolver};

use super::{ClientOptions, Idempotency, MeshChannel};
use crate::certs::CertStore;
use crate::identity::{IdentityError, SpiffeId};

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MeshClientError {
    /// Discovery refused the setting or the watch.
    #[error("discovery: {0}")]
    Discovery(#[from] weft_discovery::DiscoveryError),
    /// The contracts' descriptor sets did not decode.
    #[error("descriptor sets: {0}")]
    Descriptors(#[from] prost::DecodeError),
    /// The service's name cannot form an identity.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// TLS refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Channels to the mesh's services, by name.
///
/// Over mTLS each channel presents the identity of `identity` and accepts
/// only `service/<name>` of the same trust domain; without one (a plaintext
/// development mesh) nothing is authenticated. Every channel follows its
/// service in discovery, balances across its instances and retries what the
/// contracts mark safe.
#[derive(Debug, Clone)]
pub struct MeshClient {
    discovery: Discovery,
    /// `None`: plaintext.
    identity: Option<CertStore>,
    idempotency: Arc<Idempotency>,
    /// For every service without options of its own.
    options: ClientOptions,
    /// Per service, by name.
    per_service: HashMap<String, ClientOptions>,
}

impl MeshClient {
    /// Opens discovery (`WEFT_DISCOVERY`'s forms: `local://`, `cloudmap://`,
    /// `static://`) and reads which methods are safe to retry from the
    /// contracts' encoded descriptor sets.
    pub async fn connect(
        discovery: &str,
        identity: Option<CertStore>,
        descriptor_sets: &[&[u8]],
    ) -> Result<Self, MeshClientError> {
        let discovery = Discovery::from_setting(discovery).await?;
        let idempotency = Idempotency::from_descriptor_sets(descriptor_sets)?;
        Ok(Self::new(discovery, identity, idempotency))
    }

    /// From discovery already open and an idempotency table already read.
    pub fn new(
        discovery: Discovery,
        identity: Option<CertStore>,
        idempotency: Idempotency,
    ) -> Self {
        Self {
            discovery,
            identity,
            idempotency: Arc::new(idempotency),
            options: ClientOptions::default(),
            per_service: HashMap::new(),
        }
    }

    /// The options of every channel without options of its own.
    pub fn with_options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    /// The options of `service`'s channels.
    pub fn with_service_options(mut self, service: &str, options: ClientOptions) -> Self {
        self.per_service.insert(service.to_owned(), options);
        self
    }

    /// The discovery the channels follow.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The identity calls present; `None` in plaintext.
    pub fn identity(&self) -> Option<&CertStore> {
        self.identity.as_ref()
    }

    /// The identity `service` must present: `service/<name>` in the trust
    /// domain of our own identity. `None` in plaintext.
    pub fn expected(&self, service: &str) -> Result<Option<SpiffeId>, IdentityError> {
        self.identity
            .as_ref()
            .map(|store| SpiffeId::service(store.current().id.trust_domain(), service))
            .transpose()
    }

    /// A channel to `service` with its options (or the common ones).
    pub fn channel(&self, service: &str) -> Result<MeshChannel, MeshClientError> {
        let options = self
            .per_service
            .get(service)
            .unwrap_or(&self.options)
            .clone();
        self.channel_with(service, options)
    }

    /// A channel to `service` with `options`.
    pub fn channel_with(
        &self,
        service: &str,
        options: ClientOptions,
    ) -> Result<MeshChannel, MeshClientError> {
        let endpoints = self.discovery.watch(service, &Filter::any())?;
        Ok(match (&self.identity, self.expected(service)?) {
            (Some(store), Some(expected)) => MeshChannel::mtls(
                service,
                endpoints,
                store,
                expected,
                self.idempotency.clone(),
                options,
            )?,
            _ => MeshChannel::plaintext(service, endpoints, self.idempotency.clone(), options),
        })
    }
}
