//! The two roles of discovery: a registry through which an instance makes
//! itself known, and a resolver through which a client watches a service.

use std::future::Future;

use tokio::sync::watch;

use crate::error::DiscoveryError;
use crate::types::{Filter, Health, Registration, Snapshot};

/// Makes instances known to the backend and keeps their health current.
pub trait Registry: Send + Sync {
    /// Registers an instance (or updates it when the id exists) and waits
    /// until the backend has taken it.
    fn register(
        &self,
        registration: &Registration,
    ) -> impl Future<Output = Result<(), DiscoveryError>> + Send;

    /// Reports an instance's health.
    fn set_health(
        &self,
        service: &str,
        id: &str,
        health: Health,
    ) -> impl Future<Output = Result<(), DiscoveryError>> + Send;

    /// Removes an instance and waits until the backend has done so.
    fn deregister(
        &self,
        service: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), DiscoveryError>> + Send;
}

/// Watches services. A watch never calls the backend per request: a
/// background poller (one per service and filter per process, shared by every
/// watcher) keeps the snapshot current, and stops when the last watcher is
/// dropped.
pub trait Resolver: Send + Sync {
    /// Subscribes to the endpoints of `service` narrowed by `filter`. The
    /// first value may be empty and not ready; wait for `is_ready`.
    fn watch(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<watch::Receiver<Snapshot>, DiscoveryError>;
}
