//! Everything between a Weft handler and the network: identities and mTLS
//! (with certificates that reload from disk), per-method authorization, and
//! the server's accept loop and the client's connector that carry them.

pub mod authorize;
pub mod certs;
pub mod client;
pub mod client_tls;
pub mod connector;
pub mod deadline;
pub mod drain;
pub mod identity;
pub mod incoming;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod observed_body;
pub mod policy;
pub mod private_ca;
pub mod provider;
pub mod server_tls;
pub mod trace_context;
pub mod trust;

pub use authorize::{AuthorizeLayer, CallerIdentity};
pub use certs::{CertStore, IdentityPaths, IdentitySource, LoadError, Origin};
pub use client::{ClientOptions, Idempotency, MeshChannel, MeshClient, MeshClientError};
pub use client_tls::{ClientTls, client_config};
pub use connector::{MtlsConnector, mtls_channel, plaintext_channel};
pub use deadline::{DeadlineLayer, current_deadline};
pub use drain::{DrainConfig, serve_with_drain};
pub use identity::{IdentityError, Kind, SpiffeId};
pub use incoming::{MeshConn, PeerInfo, tls_incoming};
pub use limits::ServerLimits;
pub use metrics::Metrics;
pub use observe::ObserveLayer;
pub use policy::{Policy, PolicyError};
pub use server_tls::server_config;
