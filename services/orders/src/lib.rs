//! Weft's orders service: places an order as a saga across inventory and
//! payments (reserve stock, authorize payment, sell the stock, capture the
//! payment), compensating on failure, with the saga's state durable in
//! PostgreSQL so a crash mid-saga resumes. Binaries and tests start it with
//! [`run`].

pub mod api;
pub mod config;
pub mod convert;
pub mod domain;
pub mod fault;
pub mod machine;
pub mod merchant;
pub mod recovery;
pub mod saga;
pub mod server;
pub mod store;
pub mod upstream;

pub use config::OrdersConfig;
pub use saga::SagaConfig;
pub use server::{DEFAULTS, NAME, run};
pub use weft_service::{Config, RegistrationConfig, ServeError, Transport};
