//! The harness for Weft's end-to-end tests: it starts real parts (PostgreSQL,
//! Weft services, external tools) on 127.0.0.1 and cleans up after them.

pub mod bench;
pub mod cluster;
/// HTTP GET of endpoints such as /metrics.
pub use weft::scrape as http;
pub mod inventory;
pub mod load;
pub mod mesh;
pub mod moto;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod servers;
pub mod tools;
pub mod up;
pub mod wait;

pub use postgres::TestDb;
