//! The library behind the `weft` CLI, so tests and tools can do what the
//! commands do.

pub mod certs;
pub mod postgres;
