//! Orders' configuration: what every service reads, plus how to reach
//! inventory and payments, whom captures pay, and how sagas are driven.

use std::time::Duration;

use weft_mesh::ClientOptions;
use weft_service::config::env_number;
use weft_service::{Config, ConfigError};

use crate::saga::SagaConfig;
use crate::upstream::UpstreamConfig;

/// Everything orders' `run` needs besides the listener.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// Transport, database, registration, drain.
    pub service: Config,
    /// How to reach inventory and payments.
    pub upstream: UpstreamConfig,
    /// The payments account captures pay into: an account id, or
    /// `open:<owner>:<currency>` to open it on first start (see
    /// [`crate::merchant`]).
    pub merchant_account_id: String,
    /// This instance's name in saga leases (stable across restarts where
    /// the platform allows, so a restarted instance resumes its own sagas
    /// at once).
    pub instance_id: String,
    /// How sagas are driven.
    pub saga: SagaConfig,
    /// The longest PlaceOrder and CancelOrder wait for the saga before
    /// answering with the order as it stands.
    pub wait: Duration,
}

/// An instance id for an orders process that no registration names: its
/// process id alone repeats across containers (every container's first
/// process is 1), and two instances with one id would take each other's
/// saga leases; a random part makes it this process's own. (A restart then
/// resumes its sagas when their leases lapse, not at once.)
fn unregistered_instance_id() -> String {
    format!("orders-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

impl OrdersConfig {
    /// Defaults for everything but these.
    pub fn new(service: Config, discovery: String, merchant_account_id: String) -> Self {
        let instance_id = service
            .registration
            .as_ref()
            .map(|r| r.instance_id.clone())
            .unwrap_or_else(unregistered_instance_id);
        // The clients report where the server does.
        let client = ClientOptions {
            metrics: service.metrics.clone(),
            ..ClientOptions::default()
        };
        Self {
            service,
            upstream: UpstreamConfig {
                discovery,
                client,
                call_timeout: Duration::from_secs(5),
            },
            merchant_account_id,
            instance_id,
            saga: SagaConfig::default(),
            wait: Duration::from_secs(10),
        }
    }

    /// Reads what [`Config::from_env`] reads, and `WEFT_MERCHANT_ACCOUNT`
    /// (required), `WEFT_UPSTREAM_DISCOVERY` (else `WEFT_DISCOVERY`; one is
    /// required), `WEFT_CALL_TIMEOUT_MS`, `WEFT_SAGA_LEASE_MS`,
    /// `WEFT_RECOVERY_MS` and `WEFT_ORDER_WAIT_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let service = Config::from_env(crate::NAME, &crate::DEFAULTS)?;
        let merchant = std::env::var("WEFT_MERCHANT_ACCOUNT")
            .map_err(|_| ConfigError::Missing("WEFT_MERCHANT_ACCOUNT"))?;
        crate::merchant::MerchantSetting::parse(&merchant).map_err(|e| ConfigError::Invalid {
            name: "WEFT_MERCHANT_ACCOUNT",
            reason: e.to_string(),
        })?;
        let discovery = std::env::var("WEFT_UPSTREAM_DISCOVERY")
            .or_else(|_| std::env::var("WEFT_DISCOVERY"))
            .map_err(|_| ConfigError::Missing("WEFT_UPSTREAM_DISCOVERY or WEFT_DISCOVERY"))?;
        let mut config = Self::new(service, discovery, merchant);
        if let Some(ms) = env_number("WEFT_CALL_TIMEOUT_MS")? {
            config.upstream.call_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = env_number("WEFT_SAGA_LEASE_MS")? {
            config.saga.lease = Duration::from_millis(ms.max(100));
        }
        if let Some(ms) = env_number("WEFT_RECOVERY_MS")? {
            config.saga.recovery_every = Duration::from_millis(ms.max(10));
        }
        if let Some(ms) = env_number("WEFT_ORDER_WAIT_MS")? {
            config.wait = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod instance_tests {
    use super::unregistered_instance_id;

    #[test]
    fn unregistered_instances_do_not_share_an_id_even_with_the_same_pid() {
        let ids: std::collections::HashSet<String> =
            (0..100).map(|_| unregistered_instance_id()).collect();
        assert_eq!(ids.len(), 100);
        assert!(
            ids.iter()
                .all(|id| id.starts_with(&format!("orders-{}-", std::process::id())))
        );
    }
}
