//! This instance's entry in discovery: registered unhealthy at start (in the
//! background, retried with backoff: a discovery outage must not stop a task
//! from starting), its health kept in step with readiness, and deregistered
//! when draining.

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

/// An instance about to register: where and as what, with its discovery
/// client built (building it calls nothing remote).
#[derive(Debug, Clone)]
pub struct Pending {
    discovery: Discovery,
    setting: String,
    registration: Registration,
}

impl Pending {
    /// Works out the address to advertise (`config.advertise`, else
    /// `listening`) to register with `discovery` (the client opened from
    /// `config.discovery`).
    pub fn new(
        service: &'static str,
        config: &RegistrationConfig,
        discovery: Discovery,
        listening: SocketAddr,
    ) -> Result<Self, DiscoveryError> {
        let addr = match config.advertise {
            None => listening,
            Some(Advertise::Addr(addr)) => addr,
            Some(Advertise::Auto) => SocketAddr::new(routed_ip()?, listening.port()),
        };
        let mut registration = Registration::new(service, config.instance_id.clone(), addr);
        // A platform that registers the task itself (ECS service registries)
        // knows the address: ours may be unspecified then.
        if addr.ip().is_unspecified() && !discovery.registers_externally() {
            return Err(DiscoveryError::InvalidRegistration(format!(
                "listening on {addr}: set WEFT_ADVERTISE to the address clients should dial"
            )));
        }
        registration.attributes = config.attributes.clone();
        registration.initially_healthy = false;
        Ok(Self {
            discovery,
            setting: config.discovery.clone(),
            registration,
        })
    }

    /// The discovery setting, for log lines an operator can act on.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// One attempt to register (unhealthy until readiness says otherwise).
    pub async fn register(&self) -> Result<Registered, DiscoveryError> {
        self.discovery.register(&self.registration).await?;
        tracing::info!(id = %self.registration.id, addr = %self.registration.addr, "registered in discovery");
        Ok(Registered {
            discovery: self.discovery.clone(),
            service: self.registration.service.clone(),
            id: self.registration.id.clone(),
        })
    }
}

/// A registered instance.
#[derive(Debug, Clone)]
pub struct Registered {
    discovery: Discovery,
    service: String,
    id: String,
}

impl Registered {
    /// Reports health and says whether discovery took it; failures are
    /// logged (discovery being down must not take the service down).
    pub async fn set_health(&self, health: Health) -> bool {
        match self
            .discovery
            .set_health(&self.service, &self.id, health)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, ?health, "reporting health to discovery failed");
                false
            }
        }
    }

    /// Deregisters, within a bound.
    pub async fn deregister(&self) {
        match tokio::time::timeout(
            Duration::from_secs(10),
            self.discovery.deregister(&self.service, &self.id),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(id = %self.id, "deregistered from discovery"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistering failed"),
            Err(_) => tracing::warn!("deregistering timed out"),
        }
    }
}
