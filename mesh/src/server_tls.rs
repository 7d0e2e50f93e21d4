//! The server side of mTLS: a rustls configuration that requires a client
//! certificate chaining to the current trust bundle and presents the current
//! certificate, both read from a [`CertStore`] at each handshake.

use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme};

use crate::certs::CertStore;
use crate::provider::provider;

/// A rustls server configuration for the mesh: TLS 1.3, HTTP/2, client
/// certificates required.
pub fn server_config(store: &CertStore) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ReloadingClientVerifier {
            store: store.clone(),
            provider,
            built: Mutex::new(None),
        }))
        .with_cert_resolver(Arc::new(CurrentCert(store.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct CurrentCert(CertStore);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key)
    }
}

/// rustls's WebPKI client verifier over the current trust bundle, rebuilt
/// when the bundle is reloaded.
#[derive(Debug)]
struct ReloadingClientVerifier {
    store: CertStore,
    provider: Arc<CryptoProvider>,
    built: Mutex<Option<(u64, Arc<dyn ClientCertVerifier>)>>,
}

impl ReloadingClientVerifier {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        let material = self.store.current();
        let mut built = self
            .built
            .lock()
            .map_err(|_| Error::General("verifier state poisoned".into()))?;
        if let Some((generation, verifier)) = built.as_ref()
            && *generation == material.generation
        {
            return Ok(verifier.clone());
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(material.roots, self.provider.clone())
                .build()
                .map_err(|e| Error::General(format!("client verifier: {e}")))?;
        *built = Some((material.generation, verifier.clone()));
        Ok(verifier)
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; clients present the one identity they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
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
