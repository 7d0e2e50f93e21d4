//! The static backend: fixed endpoints from configuration, for tests, for
//! calling a service outside the mesh, and for a fixed development setup.
//! Setting form: `static://inventory=127.0.0.1:7001,127.0.0.1:7002;payments=127.0.0.1:7101`
//! (a `name=` token starts a service; tokens without one add to it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::DiscoveryError;
use crate::traits::{Registry, Resolver};
use crate::types::{Endpoint, Filter, Health, Registration, Snapshot, select};

/// Fixed endpoints per service.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    services: Arc<HashMap<String, Vec<Endpoint>>>,
    // Senders kept alive so watchers see a stable, never-closing snapshot.
    senders: Arc<std::sync::Mutex<Vec<watch::Sender<Snapshot>>>>,
}

impl StaticDiscovery {
    /// Parses the part of a `static://` setting after the scheme.
    pub fn parse(spec: &str) -> Result<Self, DiscoveryError> {
        let invalid = |reason: String| DiscoveryError::InvalidSetting {
            setting: format!("static://{spec}"),
            reason,
        };
        let mut services: HashMap<String, Vec<Endpoint>> = HashMap::new();
        let mut current: Option<String> = None;
        for token in spec
            .split([',', ';'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let addr = match token.split_once('=') {
                Some((name, addr)) => {
                    if name.is_empty() {
                        return Err(invalid(format!("{token:?} has an empty service name")));
                    }
                    current = Some(name.to_owned());
                    addr
                }
                None => token,
            };
            let service = current
                .clone()
                .ok_or_else(|| invalid(format!("{token:?} comes before any service name")))?;
            let addr: SocketAddr = addr.parse().map_err(|e| {
                invalid(format!("{addr:?} is not host:port with an IP address: {e}"))
            })?;
            let list = services.entry(service).or_default();
            list.push(Endpoint {
                id: format!("static-{}", addr),
                addr,
                attributes: Default::default(),
                healthy: true,
            });
        }
        if services.is_empty() {
            return Err(invalid("names no endpoints".into()));
        }
        Ok(Self {
            services: Arc::new(services),
            senders: Default::default(),
        })
    }

    /// The configured service names.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self.services.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Registry for StaticDiscovery {
    async fn register(&self, registration: &Registration) -> Result<(), DiscoveryError> {
        tracing::debug!(service = %registration.service, "static discovery: registration is not needed");
        Ok(())
    }

    async fn set_health(&self, _: &str, _: &str, _: Health) -> Result<(), DiscoveryError> {
        Ok(())
    }

    async fn deregister(&self, _: &str, _: &str) -> Result<(), DiscoveryError> {
        Ok(())
    }
}

impl Resolver for StaticDiscovery {
    fn watch(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<watch::Receiver<Snapshot>, DiscoveryError> {
        let endpoints = self.services.get(service).cloned().unwrap_or_default();
        let (tx, rx) = watch::channel(Snapshot {
            endpoints: select(endpoints, filter).into(),
            fetched_at: Some(Instant::now()),
            last_error: None,
        });
        if let Ok(mut senders) = self.senders.lock() {
            senders.retain(|s| !s.is_closed());
            senders.push(tx);
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_services() {
        let d = StaticDiscovery::parse(
            "inventory=127.0.0.1:7001,127.0.0.1:7002;payments=127.0.0.1:7101",
        )
        .unwrap();
        assert_eq!(d.services(), ["inventory", "payments"]);
        assert_eq!(d.services["inventory"].len(), 2);
        for bad in [
            "",
            "127.0.0.1:1",
            "a=notanaddr",
            "=127.0.0.1:1",
            "a=localhost:80",
        ] {
            assert!(StaticDiscovery::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn watch_yields_the_configured_endpoints() {
        let d = StaticDiscovery::parse("inventory=127.0.0.1:7001,127.0.0.1:7002").unwrap();
        let rx = d.watch("inventory", &Filter::any()).unwrap();
        let snapshot = rx.borrow().clone();
        assert!(snapshot.is_ready());
        assert_eq!(snapshot.endpoints.len(), 2);
        assert!(
            d.watch("nope", &Filter::any())
                .unwrap()
                .borrow()
                .endpoints
                .is_empty()
        );
    }
}
