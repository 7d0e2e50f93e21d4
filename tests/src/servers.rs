//! Plain tonic servers over Weft's mTLS for tests and benchmarks: stand-ins
//! (health-only, failing, slow) whose behaviour the test controls.

use std::net::SocketAddr;

use anyhow::Result;
use tonic::service::Routes;
use weft_mesh::{CertStore, ServerLimits, server_config, tls_incoming};

/// Serves `routes` over mTLS as `store`'s identity on 127.0.0.1, port 0, in a
/// task of its own, with the default limits; returns the address.
pub async fn serve_mtls(store: &CertStore, routes: Routes) -> Result<SocketAddr> {
    serve_mtls_limited(store, routes, &ServerLimits::default()).await
}

/// [`serve_mtls`] within `limits`.
pub async fn serve_mtls_limited(
    store: &CertStore,
    routes: Routes,
    limits: &ServerLimits,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tls = server_config(store)?;
    tokio::spawn(
        limits
            .server()
            .add_routes(routes)
            .serve_with_incoming(tls_incoming(listener, tls, store, limits)),
    );
    Ok(addr)
}
