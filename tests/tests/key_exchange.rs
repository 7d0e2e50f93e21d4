//! Post-quantum hybrid key exchange between Weft peers: on by default
//! (X25519MLKEM768 negotiated), off with `KeyExchange::Classical` (X25519),
//! and a classical peer still talks to a hybrid one. Its own test binary:
//! the setting is process-wide.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rustls::NamedGroup;
use rustls::pki_types::ServerName;
use tonic::service::Routes;
use weft_mesh::client_config;
use weft_mesh::provider::{KeyExchange, set_key_exchange};
use weft_tests::pki::TestPki;
use weft_tests::servers::serve_mtls;

async fn negotiated(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<NamedGroup> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name())
}

#[tokio::test]
async fn hybrid_by_default_classical_when_set_and_the_two_interoperate() {
    let pki = TestPki::new().unwrap();
    let server_store = pki.service_store("kx-server", "kx").unwrap();
    let client_store = pki.service_store("kx-client", "client").unwrap();
    let expected = server_store.current().id;

    // Both ends hybrid (the default).
    let (_r, health) = tonic_health::server::health_reporter();
    let hybrid_server = serve_mtls(&server_store, Routes::new(health))
        .await
        .unwrap();
    let hybrid_client = client_config(&client_store, expected.clone()).unwrap();
    assert_eq!(
        negotiated(hybrid_server, hybrid_client.config()).await,
        Some(NamedGroup::X25519MLKEM768)
    );

    // Turned off: a classical client with the hybrid server, then both classical.
    set_key_exchange(KeyExchange::Classical);
    let classical_client = client_config(&client_store, expected.clone()).unwrap();
    assert_eq!(
        negotiated(hybrid_server, classical_client.config()).await,
        Some(NamedGroup::X25519)
    );
    let (_r, health) = tonic_health::server::health_reporter();
    let classical_server = serve_mtls(&server_store, Routes::new(health))
        .await
        .unwrap();
    assert_eq!(
        negotiated(classical_server, classical_client.config()).await,
        Some(NamedGroup::X25519)
    );
    // A hybrid client still reaches a classical server (it falls back to X25519).
    assert_eq!(
        negotiated(classical_server, hybrid_client.config()).await,
        Some(NamedGroup::X25519)
    );
    set_key_exchange(KeyExchange::Hybrid);
}
