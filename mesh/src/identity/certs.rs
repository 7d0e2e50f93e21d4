//! Holds a process's identity (certificate chain, private key, trust
//! bundle) and keeps it current. From PEM files, a background task notices
//! when the files change; from AWS Private CA, [`crate::private_ca`] renews.
//! Either way new material serves new handshakes while live connections
//! carry on with what they negotiated, and a certificate that is not valid
//! now or names another identity is never swapped in.

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
pub use crate::trust::Scopes;

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
    /// Private CA did not issue a usable certificate in time.
    #[error("Private CA: {0}")]
    PrivateCa(#[from] crate::private_ca::PcaError),
}

/// Where a process's identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// PEM files (`weft certs`, local use, `weft up`), watched for changes.
    Files(IdentityPaths),
    /// AWS Private CA. Every clone shares one store, so a process that
    /// serves and calls holds one key and renews once.
    PrivateCa(Arc<SharedPrivateCa>),
}

/// A Private CA identity and, once opened, its store.
#[derive(Debug)]
pub struct SharedPrivateCa {
    /// What to ask for and from whom.
    pub settings: crate::private_ca::Settings,
    store: tokio::sync::OnceCell<CertStore>,
}

impl IdentitySource {
    /// An identity from Private CA with `settings`.
    pub fn private_ca(settings: crate::private_ca::Settings) -> Self {
        Self::PrivateCa(Arc::new(SharedPrivateCa {
            settings,
            store: tokio::sync::OnceCell::new(),
        }))
    }

    /// The store: files are read now (and checked every `reload_every`);
    /// Private CA issues on the first call and every later call (from any
    /// clone) gets the same store.
    pub async fn open(&self, reload_every: Duration) -> Result<CertStore, LoadError> {
        match self {
            Self::Files(paths) => CertStore::load(paths.clone(), reload_every),
            Self::PrivateCa(shared) => shared
                .store
                .get_or_try_init(|| async {
                    let authority = Arc::new(
                        crate::private_ca::aws::AwsAuthority::connect(&shared.settings).await,
                    );
                    crate::private_ca::open(authority, shared.settings.clone()).await
                })
                .await
                .cloned()
                .map_err(LoadError::from),
        }
    }
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
    /// Which CAs may vouch for which identities (unscoped for files).
    pub scopes: Arc<Scopes>,
    /// Counts reloads, starting at 1.
    pub generation: u64,
}

/// Where a store's material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// PEM files, watched for changes.
    Files(IdentityPaths),
    /// AWS Private CA: the issuing CA's ARN.
    PrivateCa(String),
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
pub(crate) fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
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
pub(crate) fn refuse_swap(
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
    origin: Arc<Origin>,
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
        let store = Self::from_material(
            Material {
                key,
                roots,
                id,
                not_after,
                scopes: Arc::new(Scopes::Unscoped),
                generation: 1,
            },
            Origin::Files(paths.clone()),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(Arc::downgrade(&store.current), paths, seen, interval));
        }
        Ok(store)
    }

    /// A store over material obtained elsewhere; whoever made it keeps it
    /// current through [`CertStore::swap_key`] and [`CertStore::swap_trust`].
    pub(crate) fn from_material(material: Material, origin: Origin) -> Self {
        Self {
            current: Arc::new(RwLock::new(material)),
            origin: Arc::new(origin),
        }
    }

    /// Serves `key` from now on, unless it is not valid now or names
    /// another identity (then the reason, and the current key stays).
    pub(crate) fn swap_key(&self, key: Arc<CertifiedKey>) -> Result<u64, String> {
        let leaf = key
            .end_entity_cert()
            .map_err(|e| format!("no certificate: {e}"))?;
        let id = SpiffeId::from_certificate(leaf).map_err(|e| e.to_string())?;
        let (not_before, not_after) = validity(leaf)?;
        let mut m = self
            .current
            .write()
            .map_err(|_| "identity state poisoned".to_owned())?;
        if let Some(why) = refuse_swap(&m.id, &id, not_before, not_after) {
            return Err(why);
        }
        m.generation += 1;
        m.key = key;
        m.not_after = not_after;
        Ok(m.generation)
    }

    /// Verifies peers against `roots` and `scopes` from now on.
    pub(crate) fn swap_trust(&self, roots: Arc<RootCertStore>, scopes: Arc<Scopes>) -> u64 {
        let mut m = match self.current.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.generation += 1;
        m.roots = roots;
        m.scopes = scopes;
        m.generation
    }

    /// A handle that does not keep the store alive, for background tasks
    /// that should stop when the last user drops it.
    pub(crate) fn downgrade(&self) -> WeakCertStore {
        WeakCertStore {
            current: Arc::downgrade(&self.current),
            origin: self.origin.clone(),
        }
    }

    /// The material for a new handshake.
    pub fn current(&self) -> Material {
        match self.current.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Where the material comes from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// A [`CertStore`] that background tasks hold without keeping it alive.
#[derive(Debug, Clone)]
pub(crate) struct WeakCertStore {
    current: std::sync::Weak<RwLock<Material>>,
    origin: Arc<Origin>,
}

impl WeakCertStore {
    /// The store, while anyone else still holds it.
    pub(crate) fn upgrade(&self) -> Option<CertStore> {
        Some(CertStore {
            current: self.current.upgrade()?,
            origin: self.origin.clone(),
        })
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
                        scopes: m.scopes.clone(),
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
