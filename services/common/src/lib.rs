//! What every Weft service shares: configuration from the environment,
//! migrations at start-up, a database pool with the idempotency protocol,
//! input checks common to all contracts, and serving with mTLS, health tied
//! to the database, discovery registration and the drain.

pub mod aws;
pub mod binary;
pub mod config;
pub mod db;
pub mod db_password;
pub mod ecs;
pub mod keyed;
pub mod load;
pub mod metrics_endpoint;
pub mod migrate;
pub mod money;
pub mod node;
pub mod pg_tls;
pub mod registration;
pub mod roles;
pub mod routes;
pub mod serve;
pub mod telemetry;
pub mod validate;

pub use config::{Advertise, Config, ConfigError, Defaults, RegistrationConfig, Transport};
pub use db::{Db, DbError};
pub use keyed::{IdempotencyKey, caller_of};
pub use migrate::{MigrateError, migrate};
pub use money::Money;
pub use node::{Node, NodeError};
pub use serve::{AbortOnDrop, ServeError, Served, serve};
