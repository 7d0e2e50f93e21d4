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

/// A rustls client configuration that presents our current certificate and
/// accepts only a server whose identity is `expected`.
pub fn client_config(store: &CertStore, expected: SpiffeId) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            store: store.clone(),
            expected,
            provider,
        }))
        .with_client_cert_resolver(Arc::new(CurrentClientCert(store.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Sessions are resumed (the server verifies a resumed client's chain
    // again; see `crate::incoming`).
    Ok(Arc::new(config))
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
