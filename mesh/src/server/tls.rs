//! The server side of mTLS: a rustls configuration that requires a client
//! certificate chaining to the current trust bundle and presents the current
//! certificate, both read from a [`CertStore`] at each handshake. Where the
//! store scopes its CAs ([`crate::trust`]), the client's chain must also
//! lead to a CA scoped to the identity it claims.

use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::certs::CertStore;
use crate::identity::SpiffeId;
use crate::provider::provider;
use crate::trust::Vouch;

/// A rustls server configuration for the mesh: TLS 1.3, HTTP/2, client
/// certificates required.
pub fn server_config(store: &CertStore) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier(store))
        .with_cert_resolver(Arc::new(CurrentCert(store.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The verifier of client certificates against `store`'s current bundle
/// and scopes. rustls does not call it for a resumed session, which
/// restores the client's chain from the session: [`crate::incoming`] calls
/// it again then, so a client whose certificate expired or whose CA left
/// the bundle cannot come back by resuming.
pub fn client_verifier(store: &CertStore) -> Arc<dyn ClientCertVerifier> {
    Arc::new(ReloadingClientVerifier {
        store: store.clone(),
        provider: provider(),
        built: Mutex::new(None),
        scoped: Mutex::new((0, Vec::new())),
    })
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
    /// Verifiers over scoped CA sets, for the generation they were built in.
    scoped: Mutex<ScopedVerifiers>,
}

type ScopedVerifiers = (u64, Vec<(Arc<RootCertStore>, Arc<dyn ClientCertVerifier>)>);

fn bad_identity(e: crate::identity::IdentityError) -> Error {
    Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
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

    /// A verifier that accepts only chains to `roots`.
    fn scoped(
        &self,
        generation: u64,
        roots: Arc<RootCertStore>,
    ) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        let mut cache = self
            .scoped
            .lock()
            .map_err(|_| Error::General("verifier state poisoned".into()))?;
        if cache.0 != generation {
            *cache = (generation, Vec::new());
        }
        if let Some((_, verifier)) = cache.1.iter().find(|(r, _)| Arc::ptr_eq(r, &roots)) {
            return Ok(verifier.clone());
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| Error::General(format!("client verifier: {e}")))?;
        cache.1.push((roots, verifier.clone()));
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
        let verified = self
            .inner()?
            .verify_client_cert(end_entity, intermediates, now)?;
        let material = self.store.current();
        let claimed = || SpiffeId::from_certificate(end_entity).map_err(bad_identity);
        match material.scopes.for_identity(&claimed()?) {
            Vouch::Any => Ok(verified),
            Vouch::Only(roots) => self.scoped(material.generation, roots)?.verify_client_cert(
                end_entity,
                intermediates,
                now,
            ),
            Vouch::Nobody => Err(Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
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
