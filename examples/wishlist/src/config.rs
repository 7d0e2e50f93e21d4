//! Wishlist's configuration: what every Weft service reads, plus how to reach
//! inventory.

use std::time::Duration;

use weft_service::config::env_number;
use weft_service::{Config, ConfigError};

/// Everything wishlist's `run` needs besides the listener.
#[derive(Debug, Clone)]
pub struct WishlistConfig {
    /// Transport, database, registration, drain: Weft's common settings.
    pub service: Config,
    /// The discovery setting inventory is found with.
    pub discovery: String,
    /// How long a call to inventory may take, retries included, when the
    /// incoming call has no deadline to pass on.
    pub inventory_timeout: Duration,
}

impl WishlistConfig {
    /// Defaults for everything but these.
    pub fn new(service: Config, discovery: String) -> Self {
        Self {
            service,
            discovery,
            inventory_timeout: Duration::from_secs(5),
        }
    }

    /// Reads what [`Config::from_env`] reads, `WEFT_DISCOVERY` (required:
    /// wishlist cannot work without inventory) and `WEFT_CALL_TIMEOUT_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let service = Config::from_env(crate::NAME, &crate::DEFAULTS)?;
        let discovery =
            std::env::var("WEFT_DISCOVERY").map_err(|_| ConfigError::Missing("WEFT_DISCOVERY"))?;
        let mut config = Self::new(service, discovery);
        if let Some(ms) = env_number("WEFT_CALL_TIMEOUT_MS")? {
            config.inventory_timeout = Duration::from_millis(ms.max(1));
        }
        Ok(config)
    }
}
