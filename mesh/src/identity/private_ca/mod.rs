//! Identities from AWS Private CA, in process and without a sidecar: the
//! task makes its key pair in memory (the key never leaves the process),
//! asks its CA to sign a CSR carrying its SPIFFE id, serves with the result,
//! and renews at a fraction of the lifetime with backoff and jitter. The
//! trust bundle is the listed CAs' own certificates (and any listed PEM
//! files, such as the operators' CA), fetched again every refresh period,
//! so a CA whose certificate was renewed is trusted without a restart.
//!
//! The CA is behind [`Authority`], so the schedule is tested on a paused
//! clock with a stand-in; [`aws::AwsAuthority`] is the real one.

pub mod aws;
mod issue;
mod settings;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use weft_discovery::backoff::{Backoff, jittered};

use crate::certs::{CertStore, Material, Origin, Scopes, WeakCertStore};

pub use issue::renew_at;
pub use settings::{END_ENTITY_TEMPLATE, Settings, SettingsError};

/// Why a call to the CA failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PcaError {
    /// The CA asked us to slow down.
    #[error("throttled: {0}")]
    Throttled(String),
    /// IAM or the CA's policy refused the call.
    #[error("access denied: {0}")]
    Denied(String),
    /// The CA answered something unusable (no certificate, a certificate
    /// for another identity, one that is not valid now).
    #[error("unusable answer: {0}")]
    Unusable(String),
    /// Anything else (network, the service, a CA that is not active).
    #[error("{0}")]
    Other(String),
}

/// The calls Weft makes to a private CA.
pub trait Authority: Send + Sync + 'static {
    /// `IssueCertificate` on `ca` for `csr_pem`, valid until `not_after`;
    /// returns the new certificate's ARN.
    fn issue(
        &self,
        ca: &str,
        csr_pem: &str,
        not_after: SystemTime,
    ) -> impl Future<Output = Result<String, PcaError>> + Send;

    /// `GetCertificate`: the certificate and its chain as PEM, or `None`
    /// while the CA is still signing it.
    fn certificate(
        &self,
        ca: &str,
        certificate_arn: &str,
    ) -> impl Future<Output = Result<Option<String>, PcaError>> + Send;

    /// `GetCertificateAuthorityCertificate`: the CA's own certificate, PEM.
    fn ca_certificate(&self, ca: &str) -> impl Future<Output = Result<String, PcaError>> + Send;
}

/// Makes the identity now (retrying with backoff for up to
/// `settings.start_timeout`, since nothing can be served without it), then
/// keeps it renewed and its trust bundle refreshed for as long as the
/// returned store is held.
pub async fn open<A: Authority>(
    authority: Arc<A>,
    settings: Settings,
) -> Result<CertStore, PcaError> {
    let deadline = tokio::time::Instant::now() + settings.start_timeout;
    let mut backoff = Backoff::new(
        Duration::from_millis(500),
        2.0,
        Duration::from_secs(10),
        0.2,
    );
    let (trust, issued) = loop {
        let attempt = async {
            let trust = fetch_trust(authority.as_ref(), &settings, &HashMap::new()).await?;
            let issued = issue::issue(authority.as_ref(), &settings).await?;
            Ok::<_, PcaError>((trust, issued))
        };
        match attempt.await {
            Ok(done) => break done,
            Err(e) => {
                let delay = backoff.next_delay();
                if tokio::time::Instant::now() + delay > deadline {
                    return Err(e);
                }
                tracing::warn!(ca = %settings.issuing_ca, "cannot obtain a certificate: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    };
    let (roots, scopes, known) = trust;
    let store = CertStore::from_material(
        Material {
            key: issued.key,
            roots,
            id: settings.identity.clone(),
            not_after: issued.not_after,
            scopes,
            generation: 1,
        },
        Origin::PrivateCa(settings.issuing_ca.clone()),
    );
    tracing::info!(id = %settings.identity, ca = %settings.issuing_ca, not_after = ?issued.not_after, "certificate issued by Private CA");
    let settings = Arc::new(settings);
    tokio::spawn(renew(
        authority.clone(),
        settings.clone(),
        store.downgrade(),
        issued.requested_at,
        issued.not_after,
    ));
    tokio::spawn(refresh_trust(authority, settings, store.downgrade(), known));
    Ok(store)
}

/// Renews before expiry for as long as the store lives: at
/// [`renew_at`], then on failure again with backoff (throttling backs off
/// longer), never waiting past a quarter of the time left.
async fn renew<A: Authority>(
    authority: Arc<A>,
    settings: Arc<Settings>,
    store: WeakCertStore,
    mut requested_at: SystemTime,
    mut not_after: SystemTime,
) {
    loop {
        let at = renew_at(requested_at, not_after, settings.renew_at, settings.jitter);
        tokio::time::sleep(until(at)).await;
        let mut errors = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(60), 0.2);
        loop {
            let Some(current) = store.upgrade() else {
                return;
            };
            let outcome = match issue::issue(authority.as_ref(), &settings).await {
                Ok(issued) => current
                    .swap_key(issued.key.clone())
                    .map(|generation| (generation, issued))
                    .map_err(PcaError::Unusable),
                Err(e) => Err(e),
            };
            drop(current);
            match outcome {
                Ok((generation, issued)) => {
                    tracing::info!(generation, not_after = ?issued.not_after, "renewed the certificate");
                    (requested_at, not_after) = (issued.requested_at, issued.not_after);
                    break;
                }
                Err(e) => {
                    let mut delay = errors.next_delay();
                    if matches!(e, PcaError::Throttled(_)) {
                        delay = delay.saturating_mul(4);
                    }
                    // Close to expiry, try more often rather than less.
                    let left = until(not_after);
                    let delay = delay.min((left / 4).max(Duration::from_millis(200)));
                    tracing::warn!(ca = %settings.issuing_ca, expires_in = ?left, "cannot renew the certificate: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The CA certificates last fetched, by CA ARN.
type Known = HashMap<String, Vec<CertificateDer<'static>>>;

/// Builds the bundle and scopes from every listed CA. A CA that does not
/// answer keeps the certificates it had in `known`; one never fetched is an
/// error.
async fn fetch_trust<A: Authority>(
    authority: &A,
    settings: &Settings,
    known: &Known,
) -> Result<(Arc<RootCertStore>, Arc<Scopes>, Known), PcaError> {
    let mut fetched = Known::new();
    for (_, ca) in &settings.trust {
        if fetched.contains_key(ca) {
            continue;
        }
        let pem = if ca.starts_with('/') {
            // A few kilobytes on local disk, once per refresh.
            std::fs::read_to_string(ca).map_err(|e| PcaError::Other(format!("{ca}: {e}")))
        } else {
            authority.ca_certificate(ca).await
        };
        let certs = match pem {
            Ok(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PcaError::Unusable(format!("{ca}: {e}")))?,
            Err(e) => match known.get(ca) {
                Some(last) => {
                    tracing::warn!(%ca, "cannot refresh the CA certificate: {e}; keeping the last one");
                    last.clone()
                }
                None => return Err(e),
            },
        };
        if certs.is_empty() {
            return Err(PcaError::Unusable(format!("{ca}: no certificate")));
        }
        fetched.insert(ca.clone(), certs);
    }
    let mut all = RootCertStore::empty();
    let mut by_key: BTreeMap<&str, RootCertStore> = BTreeMap::new();
    for (key, ca) in &settings.trust {
        for cert in fetched.get(ca).into_iter().flatten() {
            let bad = |e: rustls::Error| PcaError::Unusable(format!("{ca}: {e}"));
            all.add(cert.clone()).map_err(bad)?;
            by_key
                .entry(key)
                .or_insert_with(RootCertStore::empty)
                .add(cert.clone())
                .map_err(bad)?;
        }
    }
    let scopes = Scopes::Scoped(
        by_key
            .into_iter()
            .map(|(k, roots)| (k.to_owned(), Arc::new(roots)))
            .collect(),
    );
    Ok((Arc::new(all), Arc::new(scopes), fetched))
}

/// Fetches the CA certificates every refresh period (with jitter) and swaps
/// the bundle in when it changed.
async fn refresh_trust<A: Authority>(
    authority: Arc<A>,
    settings: Arc<Settings>,
    store: WeakCertStore,
    mut known: Known,
) {
    loop {
        tokio::time::sleep(jittered(settings.trust_refresh, settings.jitter)).await;
        if store.upgrade().is_none() {
            return;
        }
        match fetch_trust(authority.as_ref(), &settings, &known).await {
            Ok((roots, scopes, fetched)) => {
                if fetched != known {
                    if let Some(store) = store.upgrade() {
                        let generation = store.swap_trust(roots, scopes);
                        tracing::info!(
                            generation,
                            "the CA certificates changed; trusting the new bundle"
                        );
                    }
                    known = fetched;
                }
            }
            Err(e) => {
                tracing::warn!("cannot refresh the trust bundle: {e}; keeping the current one")
            }
        }
    }
}

/// How long from now until `at` (zero if past).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}
