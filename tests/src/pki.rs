//! A throwaway PKI for tests: a CA in a temporary directory, and certificates
//! for services and operators issued on demand (also expired, not yet valid,
//! or from a foreign CA, for the negative cases).

use std::path::{Path, PathBuf};

use anyhow::Result;
use time::{Duration, OffsetDateTime};
use weft::certs::{DevCa, Validity};
use weft_mesh::{CertStore, IdentityPaths, SpiffeId};

/// The trust domain of test identities.
pub const TRUST_DOMAIN: &str = "weft.test";

/// A CA and the directory its files are in.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: DevCa,
}

impl TestPki {
    /// A new CA in a new temporary directory.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::create(TRUST_DOMAIN, Validity::days(30))?;
        ca.write(dir.path(), false)?;
        Ok(Self { dir, ca })
    }

    /// The directory (ca.pem, and every issued NAME.pem / NAME.key).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The trust bundle.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues (or re-issues) a service certificate valid for a day, saved as
    /// `<stem>.pem`/`.key`, naming `service`, with SAN 127.0.0.1 for tools.
    pub fn service(&self, stem: &str, service: &str) -> Result<IdentityPaths> {
        self.issue(
            stem,
            &SpiffeId::service(TRUST_DOMAIN, service)?,
            Validity::days(1),
        )
    }

    /// [`Self::service`]'s identity loaded as a process's certificate store
    /// (files re-read every 60 s).
    pub fn service_store(&self, stem: &str, service: &str) -> Result<CertStore> {
        Ok(CertStore::load(
            self.service(stem, service)?,
            std::time::Duration::from_secs(60),
        )?)
    }

    /// Issues an operator certificate saved as `<stem>.pem`/`.key`.
    pub fn operator(&self, stem: &str, name: &str) -> Result<IdentityPaths> {
        self.issue(
            stem,
            &SpiffeId::operator(TRUST_DOMAIN, name)?,
            Validity::days(1),
        )
    }

    /// A service certificate that expired an hour ago.
    pub fn expired(&self, stem: &str, service: &str) -> Result<IdentityPaths> {
        let now = OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now - Duration::days(2),
            not_after: now - Duration::hours(1),
        };
        self.issue(stem, &SpiffeId::service(TRUST_DOMAIN, service)?, validity)
    }

    /// A service certificate that becomes valid tomorrow.
    pub fn not_yet_valid(&self, stem: &str, service: &str) -> Result<IdentityPaths> {
        let now = OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now + Duration::days(1),
            not_after: now + Duration::days(2),
        };
        self.issue(stem, &SpiffeId::service(TRUST_DOMAIN, service)?, validity)
    }

    /// Issues with any identity and validity.
    pub fn issue(&self, stem: &str, id: &SpiffeId, validity: Validity) -> Result<IdentityPaths> {
        let issued = self
            .ca
            .issue(id, validity, &["127.0.0.1".into(), "localhost".into()])?;
        let (cert, key) = issued.write(self.dir.path(), stem, true)?;
        Ok(IdentityPaths {
            cert,
            key,
            trust_bundle: self.ca_path(),
        })
    }

    /// A certificate for `service` from another CA, with this PKI's trust
    /// bundle (so only the peer's check can refuse it).
    pub fn foreign(&self, stem: &str, service: &str) -> Result<IdentityPaths> {
        let other = DevCa::create(TRUST_DOMAIN, Validity::days(30))?;
        let issued = other.issue(
            &SpiffeId::service(TRUST_DOMAIN, service)?,
            Validity::days(1),
            &[],
        )?;
        let (cert, key) = issued.write(self.dir.path(), stem, true)?;
        Ok(IdentityPaths {
            cert,
            key,
            trust_bundle: self.ca_path(),
        })
    }
}
