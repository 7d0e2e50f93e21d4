//! This instance's entry in discovery: registered unhealthy at start, its
//! health kept in step with the database, and deregistered when draining.

use std::net::SocketAddr;
use std::time::Duration;

use weft_discovery::{Discovery, DiscoveryError, Health, Registration, Registry};

use crate::config::{Advertise, RegistrationConfig};

/// This host's address on the interface that routes to the network: a UDP
/// socket "connected" to a private address picks it without sending a
/// packet (on ECS, the task's own address).
fn routed_ip() -> Result<std::net::IpAddr, DiscoveryError> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.254:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| {
            DiscoveryError::InvalidRegistration(format!(
                "WEFT_ADVERTISE=auto: no routed address ({e}); give the address instead"
            ))
        })?;
    Ok(socket.ip())
}

/// A registered instance.
#[derive(Debug, Clone)]
pub struct Registered {
    discovery: Discovery,
    service: &'static str,
    id: String,
}

impl Registered {
    /// Connects to discovery and registers (unhealthy until the database is
    /// known to answer), advertising `config.advertise` or `listening`.
    pub async fn register(
        service: &'static str,
        config: &RegistrationConfig,
        listening: SocketAddr,
    ) -> Result<Self, DiscoveryError> {
        let addr = match config.advertise {
            None => listening,
            Some(Advertise::Addr(addr)) => addr,
            Some(Advertise::Auto) => SocketAddr::new(routed_ip()?, listening.port()),
        };
        if addr.ip().is_unspecified() {
            return Err(DiscoveryError::InvalidRegistration(format!(
                "listening on {addr}: set WEFT_ADVERTISE to the address clients should dial"
            )));
        }
        let discovery = Discovery::from_setting(&config.discovery).await?;
        let mut registration = Registration::new(service, config.instance_id.clone(), addr);
        registration.attributes = config.attributes.clone();
        registration.initially_healthy = false;
        discovery.register(&registration).await?;
        tracing::info!(id = %config.instance_id, %addr, "registered in discovery");
        Ok(Self {
            discovery,
            service,
            id: config.instance_id.clone(),
        })
    }

    /// Reports health; failures are logged (discovery being down must not
    /// take the service down).
    pub async fn set_health(&self, health: Health) {
        if let Err(e) = self
            .discovery
            .set_health(self.service, &self.id, health)
            .await
        {
            tracing::warn!(error = %e, ?health, "reporting health to discovery failed");
        }
    }

    /// Deregisters, within a bound.
    pub async fn deregister(&self) {
        match tokio::time::timeout(
            Duration::from_secs(10),
            self.discovery.deregister(self.service, &self.id),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(id = %self.id, "deregistered from discovery"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistering failed"),
            Err(_) => tracing::warn!("deregistering timed out"),
        }
    }
}
