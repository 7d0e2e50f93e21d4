//! Everything between a Weft handler and the network, by concern:
//! `identity` (SPIFFE ids, certificate sources, trust bundles, policy),
//! `server` (the accept loop and its limits, server TLS, authorization,
//! deadlines, the drain, server metrics) and `client` (the front door,
//! channels, the pool and its picking, retries, timeouts, client TLS and the
//! connector, client metrics).

pub mod client;
pub mod identity;
pub mod metrics;
pub mod provider;
pub mod server;
pub mod trace_context;

// The modules' paths before the crate was laid out by concern, kept for
// callers.
pub use client::{connector, tls as client_tls};
pub use identity::{certs, policy, private_ca, trust};
pub use server::{
    authorize, deadline, drain, incoming, limits, load_report, observe, observed_body, rate_limit,
    retries, tls as server_tls,
};

pub use authorize::{AuthorizeLayer, CallerIdentity};
pub use certs::{CertStore, IdentityPaths, IdentitySource, LoadError, Origin};
pub use client::{
    ClientOptions, FetchError, FileSource, Idempotency, Live, MeshChannel, MeshClient,
    MeshClientError, RouteFetch, RoutePolling, RouteTable, Routes, SourceEvents,
};
pub use client_tls::{ClientTls, client_config};
pub use connector::{Gathered, MtlsConnector, mtls_channel, plaintext_channel};
pub use deadline::{DeadlineLayer, current_deadline};
pub use drain::{DrainConfig, serve_with_drain};
pub use identity::{IdentityError, Kind, SpiffeId};
pub use incoming::{MeshConn, PeerInfo, tls_incoming};
pub use limits::ServerLimits;
pub use load_report::{LoadGauge, LoadReportLayer};
pub use metrics::Metrics;
pub use observe::ObserveLayer;
pub use policy::{Policy, PolicyError, SharedPolicy};
pub use rate_limit::RateLimitLayer;
pub use retries::{RetriesLayer, current_retries_spent, with_retries_spent};
pub use server_tls::server_config;
