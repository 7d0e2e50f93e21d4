//! The client side of mTLS: verify that the server's chain leads to the
//! trust bundle and that its SPIFFE id is the service we meant to call. The
//! DNS name or IP we dialled is not what is checked: endpoints come from
//! discovery as IP addresses, and any certificate could name an IP. Where
//! the store scopes its CAs ([`crate::trust`]), the chain must also lead to
//! a CA scoped to the server's identity.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

use crate::certs::CertStore;
use crate::identity::SpiffeId;
use crate::provider::provider;
use crate::trust::Vouch;

/// What a mesh client dials with: the TLS configuration, and its verifier
/// for a resumed session, whose restored server chain rustls does not check
/// again (see [`ClientTls::check_resumed`]).
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    verifier: Arc<dyn ServerCertVerifier>,
}

impl ClientTls {
    /// The rustls configuration (for raw TLS connections).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The same verifier with another configuration made from this one's
    /// (a benchmark's variations).
    pub fn with_config(&self, config: ClientConfig) -> Self {
        Self {
            config: Arc::new(config),
            verifier: self.verifier.clone(),
        }
    }

    /// A resumed session skipped verifying the server: its restored chain
    /// is checked against the bundle, the scopes and the time now, as a full
    /// handshake's is, so a server whose certificate expired or whose CA
    /// left the bundle cannot be reached by resuming. A full handshake
    /// passes as it is.
    pub fn check_resumed(
        &self,
        session: &rustls::ClientConnection,
        server_name: &ServerName<'_>,
    ) -> Result<(), Error> {
        if session.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
            return Ok(());
        }
        let chain = session.peer_certificates().unwrap_or_default();
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Error::NoCertificatesPresented);
        };
        self.verifier
            .verify_server_cert(leaf, intermediates, server_name, &[], UnixTime::now())
            .map(|_| ())
    }
}

/// A rustls client configuration that presents our current certificate and
/// accepts only a server whose identity is `expected`.
pub fn client_config(store: &CertStore, expected: SpiffeId) -> Result<ClientTls, Error> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        store: store.clone(),
        expected,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_cert_resolver(Arc::new(CurrentClientCert(store.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Sessions are resumed; each side checks the restored chain again (the
    // server in `crate::incoming`, the client with `check_resumed`).
    Ok(ClientTls {
        config: Arc::new(config),
        verifier,
    })
}

#[derive(Debug)]
struct CurrentClientCert(CertStore);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    store: CertStore,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let material = self.store.current();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let chains_to = |roots: &rustls::RootCertStore| {
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )
        };
        chains_to(&material.roots)?;
        let actual = SpiffeId::from_certificate(end_entity).map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        if actual != self.expected {
            tracing::warn!(expected = %self.expected, %actual, "server presented another identity");
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        match material.scopes.for_identity(&actual) {
            Vouch::Any => {}
            Vouch::Only(roots) => chains_to(&roots)?,
            Vouch::Nobody => {
                return Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
