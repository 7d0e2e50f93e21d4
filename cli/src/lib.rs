//! The library behind the `weft` CLI, so tests and tools can do what the
//! commands do: development certificates, a throwaway PostgreSQL cluster,
//! the `weft.toml` manifest, supervised instance processes, the control
//! socket of a running `weft up`, and reading an instance's metrics.

pub mod certs;
pub mod control;
pub mod manifest;
pub mod postgres;
pub mod scrape;
pub mod supervise;
