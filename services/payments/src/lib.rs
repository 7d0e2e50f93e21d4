//! Weft's payments service: accounts and a double-entry ledger kept in
//! PostgreSQL (authorize holds money, capture pays it to a payee, void lifts
//! the hold, refund gives it back), served over gRPC. Binaries and tests
//! start it with [`run`].

pub mod api;
pub mod convert;
pub mod domain;
pub mod server;
pub mod store;

pub use server::{DEFAULTS, NAME, run};
pub use weft_service::{Config, RegistrationConfig, ServeError, Transport};
