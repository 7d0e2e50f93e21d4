//! Weft's inventory service: products, stock levels and reservations, kept in
//! PostgreSQL and served over gRPC. Binaries and tests start it with [`run`].

pub mod api;
pub mod config;
pub mod convert;
pub mod domain;
pub mod migrate;
pub mod registration;
pub mod server;
pub mod store;
pub mod validate;

pub use config::{Config, RegistrationConfig, Transport};
pub use server::{ServeError, run};
