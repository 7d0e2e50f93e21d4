//! A development certificate authority: creates a CA, and issues service and
//! operator certificates whose URI SAN is their SPIFFE id. Keys are written
//! with mode 0600 and nothing is overwritten without `force`.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use weft_mesh::SpiffeId;

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file exists and `force` was not given.
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Generating or signing failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name is not usable in an identity.
    #[error(transparent)]
    Identity(#[from] weft_mesh::IdentityError),
    /// A validity window is empty or out of range.
    #[error("invalid validity: {0}")]
    Validity(String),
}

/// A certificate's validity window.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (tolerating clock skew) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// A CA that can issue certificates.
#[derive(Debug)]
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    /// The trust domain it issues for, as recorded in `trust-domain` beside
    /// it (`None` for a CA written before that file existed).
    trust_domain: Option<String>,
}

/// An issued certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl DevCa {
    /// Creates a new CA named for `trust_domain`.
    pub fn create(trust_domain: &str, validity: Validity) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("Weft development CA ({trust_domain})"),
        );
        dn.push(DnType::OrganizationName, "Weft");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
            trust_domain: Some(trust_domain.to_owned()),
        })
    }

    /// Loads a CA written by [`DevCa::write`].
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key_pem = read(&dir.join("ca.key"))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        let trust_domain = std::fs::read_to_string(dir.join("trust-domain"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        Ok(Self {
            issuer,
            cert_pem,
            key_pem,
            trust_domain,
        })
    }

    /// The trust domain the CA issues for, where it was recorded.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// The CA certificate (the trust bundle), in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem`, `ca.key` and `trust-domain` into `dir`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<(), CertError> {
        write_file(&dir.join("ca.pem"), &self.cert_pem, 0o644, force)?;
        write_file(&dir.join("ca.key"), &self.key_pem, 0o600, force)?;
        if let Some(trust_domain) = &self.trust_domain {
            write_file(
                &dir.join("trust-domain"),
                &format!("{trust_domain}\n"),
                0o644,
                force,
            )?;
        }
        Ok(())
    }

    /// Issues a certificate for `id`, usable by both TLS clients and servers,
    /// with `extra_sans` (DNS names or IPs) for tools that check them.
    pub fn issue(
        &self,
        id: &SpiffeId,
        validity: Validity,
        extra_sans: &[String],
    ) -> Result<Issued, CertError> {
        if validity.not_after <= validity.not_before {
            return Err(CertError::Validity(
                "not_after must come after not_before".into(),
            ));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        for san in extra_sans {
            params.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into()?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `<stem>.pem` and `<stem>.key` (mode 0600) into `dir`; returns
    /// their paths.
    pub fn write(
        &self,
        dir: &Path,
        stem: &str,
        force: bool,
    ) -> Result<(PathBuf, PathBuf), CertError> {
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        if !force {
            for p in [&cert, &key] {
                if p.exists() {
                    return Err(CertError::Exists(p.clone()));
                }
            }
        }
        write_file(&key, &self.key_pem, 0o600, force)?;
        write_file(&cert, &self.cert_pem, 0o644, force)?;
        Ok((cert, key))
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a reader (a service
/// reloading its certificates) never sees a half-written file, and the mode
/// is set before any content exists.
fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertError> {
    if !force && path.exists() {
        return Err(CertError::Exists(path.to_owned()));
    }
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cert"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn issues_certificates_with_the_spiffe_id_and_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create("weft.local", Validity::days(10)).unwrap();
        ca.write(dir.path(), false).unwrap();
        let id = SpiffeId::service("weft.local", "inventory").unwrap();
        let issued = DevCa::load(dir.path())
            .unwrap()
            .issue(&id, Validity::days(1), &["127.0.0.1".into()])
            .unwrap();
        let (cert, key) = issued.write(dir.path(), "inventory", false).unwrap();
        let der = rustls_der(&std::fs::read_to_string(&cert).unwrap());
        assert_eq!(SpiffeId::from_certificate(&der.into()).unwrap(), id);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // No overwriting without force.
        assert!(matches!(
            issued.write(dir.path(), "inventory", false),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(
            ca.write(dir.path(), false),
            Err(CertError::Exists(_))
        ));
        issued.write(dir.path(), "inventory", true).unwrap();
    }

    fn rustls_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
