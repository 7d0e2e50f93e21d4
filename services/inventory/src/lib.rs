//! Weft's inventory service: products, stock levels and reservations, kept in
//! PostgreSQL and served over gRPC. Binaries and tests start it with [`run`].

pub mod api;
pub mod convert;
pub mod domain;
pub mod server;
pub mod store;
pub mod validate;

pub use server::{DEFAULTS, NAME, run};
pub use weft_service::{Config, RegistrationConfig, ServeError, Transport};
