//! Loads an identity (certificate chain, private key, trust bundle) from PEM
//! files and keeps it current: a background task notices when the files
//! change and swaps in the new material for new handshakes, while live
//! connections carry on with what they negotiated.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::identity::SpiffeId;
use crate::provider::provider;

/// Where an identity's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPaths {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA certificates peers must chain to.
    pub trust_bundle: PathBuf,
}

/// Why an identity could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the certificate, or TLS refuses it.
    #[error("{0}")]
    Tls(String),
    /// The certificate carries no SPIFFE identity.
    #[error("certificate: {0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// One loaded generation of identity material.
#[derive(Debug, Clone)]
pub struct Material {
    /// The certificate and signing key for handshakes.
    pub key: Arc<CertifiedKey>,
    /// The trust anchors.
    pub roots: Arc<RootCertStore>,
    /// The identity the certificate carries.
    pub id: SpiffeId,
    /// When the leaf certificate expires (its notAfter).
    pub not_after: SystemTime,
    /// Counts reloads, starting at 1.
    pub generation: u64,
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> LoadError {
    LoadError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// What [`load`] reads: the signing key, the trust anchors, the identity
/// and the leaf's expiry.
pub type Loaded = (Arc<CertifiedKey>, Arc<RootCertStore>, SpiffeId, SystemTime);

/// The leaf's notBefore and notAfter.
fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let at = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|_| "a validity date before 1970".to_owned())
    };
    Ok((
        at(parsed.validity().not_before)?,
        at(parsed.validity().not_after)?,
    ))
}

/// Why a reloaded identity must not replace the current one, if it must
/// not: a certificate that is not valid now would fail every handshake, and
/// one for another identity would make this process someone else.
fn refuse_swap(
    current: &SpiffeId,
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Option<String> {
    let now = SystemTime::now();
    if id != current {
        return Some(format!("it names {id}, not {current}"));
    }
    if now < not_before {
        return Some("it is not valid yet".into());
    }
    if now >= not_after {
        return Some("it has expired".into());
    }
    None
}

/// Reads and checks the three files once.
pub fn load(paths: &IdentityPaths, provider: &CryptoProvider) -> Result<Loaded, LoadError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|e| file_error(&paths.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&paths.cert, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| file_error(&paths.cert, "holds no certificate"))?;
    let id = SpiffeId::from_certificate(leaf)?;
    let (not_before, expires) = validity(leaf).map_err(|e| file_error(&paths.cert, e))?;
    if not_before > SystemTime::now() || expires <= SystemTime::now() {
        tracing::error!(cert = %paths.cert.display(), "the certificate is not valid now: handshakes will fail");
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| file_error(&paths.key, e))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(&paths.key, e))?;
    let certified = CertifiedKey::new(chain, signing);
    // A certificate written before its key (or the reverse) is caught here,
    // and the previous generation stays in use.
    certified
        .keys_match()
        .map_err(|e| LoadError::Tls(format!("key does not match certificate: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&paths.trust_bundle)
        .map_err(|e| file_error(&paths.trust_bundle, e))?
    {
        let ca = ca.map_err(|e| file_error(&paths.trust_bundle, e))?;
        roots
            .add(ca)
            .map_err(|e| file_error(&paths.trust_bundle, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(&paths.trust_bundle, "holds no CA certificate"));
    }
    Ok((Arc::new(certified), Arc::new(roots), id, expires))
}

/// The current identity material, reloaded from disk when it changes.
#[derive(Debug, Clone)]
pub struct CertStore {
    current: Arc<RwLock<Material>>,
    paths: IdentityPaths,
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &IdentityPaths) -> Stamp {
    [&paths.cert, &paths.key, &paths.trust_bundle]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

impl CertStore {
    /// Loads the identity now (failing if it cannot) and, when a tokio
    /// runtime is present, checks the files every `interval` for changes.
    pub fn load(paths: IdentityPaths, interval: Duration) -> Result<Self, LoadError> {
        let provider = provider();
        // Stamped before reading, so a change during the read is seen later.
        let seen = stamp(&paths);
        let (key, roots, id, not_after) = load(&paths, &provider)?;
        let store = Self {
            current: Arc::new(RwLock::new(Material {
                key,
                roots,
                id,
                not_after,
                generation: 1,
            })),
            paths,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(
                Arc::downgrade(&store.current),
                store.paths.clone(),
                seen,
                interval,
            ));
        }
        Ok(store)
    }

    /// The material for a new handshake.
    pub fn current(&self) -> Material {
        match self.current.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The files this store reads.
    pub fn paths(&self) -> &IdentityPaths {
        &self.paths
    }
}

/// Polls file stamps (modification time and size) rather than relying on
/// inotify, which misses the symlink swaps Kubernetes and some secret agents
/// use. Stops when the store is dropped.
async fn watch(
    current: std::sync::Weak<RwLock<Material>>,
    paths: IdentityPaths,
    mut seen: Stamp,
    interval: Duration,
) {
    let provider = provider();
    loop {
        tokio::time::sleep(interval).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let now = stamp(&paths);
        if now == seen {
            continue;
        }
        match load(&paths, &provider) {
            Ok((key, roots, id, not_after)) => {
                seen = now;
                if let Ok(mut m) = current.write() {
                    let generation = m.generation + 1;
                    let not_before = key
                        .end_entity_cert()
                        .ok()
                        .and_then(|leaf| validity(leaf).ok())
                        .map_or(SystemTime::UNIX_EPOCH, |(from, _)| from);
                    if let Some(why) = refuse_swap(&m.id, &id, not_before, not_after) {
                        // Said once per change of the files, not at every tick.
                        tracing::error!(cert = %paths.cert.display(), "not using the new certificate: {why}; keeping the current one");
                        continue;
                    }
                    *m = Material {
                        key,
                        roots,
                        id,
                        not_after,
                        generation,
                    };
                    tracing::info!(generation, cert = %paths.cert.display(), "reloaded certificates");
                }
            }
            // Half-written files fail here; the next tick tries again.
            Err(e) => {
                tracing::warn!(error = %e, "certificate reload failed; keeping the previous ones")
            }
        }
    }
}
