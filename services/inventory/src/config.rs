//! Inventory's configuration, read from the environment by the binary and
//! built directly by tests.

use std::time::Duration;

/// Everything `run` needs besides the listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database is.
    pub database: tokio_postgres::Config,
    /// Most database connections held at once.
    pub pool_size: usize,
    /// How long a call waits for a database connection before UNAVAILABLE.
    pub db_timeout: Duration,
    /// How long start-up keeps trying to reach the database.
    pub startup_timeout: Duration,
    /// How often health checks the database.
    pub health_interval: Duration,
    /// Most calls in flight per connection.
    pub concurrency_per_connection: usize,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable has a value that does not parse.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Defaults for everything but the database.
    pub fn new(database: tokio_postgres::Config) -> Self {
        Self {
            database,
            pool_size: 16,
            db_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(1),
            concurrency_per_connection: 256,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }

    /// Reads `DATABASE_URL` (required) and the optional `WEFT_DB_POOL_SIZE`,
    /// `WEFT_DB_TIMEOUT_MS` and `WEFT_HEALTH_INTERVAL_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url =
            std::env::var("DATABASE_URL").map_err(|_| ConfigError::Missing("DATABASE_URL"))?;
        let database = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ConfigError::Invalid {
                name: "DATABASE_URL",
                reason: e.to_string(),
            })?;
        let mut config = Self::new(database);
        if let Some(n) = env_number("WEFT_DB_POOL_SIZE")? {
            config.pool_size = usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        }
        if let Some(ms) = env_number("WEFT_DB_TIMEOUT_MS")? {
            config.db_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = env_number("WEFT_HEALTH_INTERVAL_MS")? {
            config.health_interval = Duration::from_millis(ms.max(10));
        }
        Ok(config)
    }
}

fn env_number(name: &'static str) -> Result<Option<u64>, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                name,
                reason: e.to_string(),
            }),
    }
}
