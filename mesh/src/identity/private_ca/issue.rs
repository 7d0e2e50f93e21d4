//! One issuance: a new key pair in memory, a CSR naming the SPIFFE id (and
//! any DNS names), `IssueCertificate`, `GetCertificate` until it is signed,
//! and the checks a certificate passes before it is served.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{Authority, PcaError, Settings};
use crate::certs::{refuse_swap, validity};
use crate::identity::SpiffeId;
use crate::provider::provider;

/// A certificate the CA signed, ready to serve.
pub(super) struct Issued {
    pub(super) key: Arc<CertifiedKey>,
    /// When we asked for it: Private CA backdates notBefore by an hour for
    /// clock skew, so the lifetime we asked for runs from here.
    pub(super) requested_at: SystemTime,
    pub(super) not_after: SystemTime,
}

/// When to renew a certificate asked for at `requested_at` and valid until
/// `not_after`: at `fraction` of the way (spread by ±`jitter` of the
/// lifetime, so a fleet started together does not renew together), and
/// never later than 90% of the way.
pub fn renew_at(
    requested_at: SystemTime,
    not_after: SystemTime,
    fraction: f64,
    jitter: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(requested_at)
        .unwrap_or_default()
        .as_secs_f64();
    let spread = (fastrand::f64() * 2.0 - 1.0) * jitter.clamp(0.0, 0.5);
    let at = (fraction + spread * fraction).clamp(0.0, 0.9);
    requested_at + Duration::from_secs_f64(lifetime * at)
}

fn unusable(e: impl std::fmt::Display) -> PcaError {
    PcaError::Unusable(e.to_string())
}

/// Makes a key and a CSR, has the CA sign it and checks the result.
pub(super) async fn issue<A: Authority>(
    authority: &A,
    settings: &Settings,
) -> Result<Issued, PcaError> {
    let key = rcgen::KeyPair::generate().map_err(unusable)?;
    let mut params = rcgen::CertificateParams::new(settings.dns_names.clone()).map_err(unusable)?;
    params.subject_alt_names.insert(
        0,
        rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(settings.identity.to_string()).map_err(unusable)?,
        ),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, settings.identity.name());
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(unusable)?;

    let requested_at = SystemTime::now();
    let asked_until = requested_at + settings.lifetime;
    let arn = authority
        .issue(&settings.issuing_ca, &csr, asked_until)
        .await?;
    let pem = fetch(authority, &settings.issuing_ca, &arn).await?;

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(unusable)?;
    let leaf = chain.first().ok_or_else(|| unusable("no certificate"))?;
    let id = SpiffeId::from_certificate(leaf).map_err(unusable)?;
    let (not_before, not_after) = validity(leaf).map_err(unusable)?;
    if let Some(why) = refuse_swap(&settings.identity, &id, not_before, not_after) {
        return Err(PcaError::Unusable(format!("the CA's certificate: {why}")));
    }
    let signing = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(unusable)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(unusable)?;
    Ok(Issued {
        key: Arc::new(certified),
        requested_at,
        not_after,
    })
}

/// `GetCertificate` until the CA has signed (it may answer "in progress"
/// for a moment after `IssueCertificate`), for up to about 30 s.
async fn fetch<A: Authority>(authority: &A, ca: &str, arn: &str) -> Result<String, PcaError> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..20 {
        if let Some(pem) = authority.certificate(ca, arn).await? {
            return Ok(pem);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    Err(PcaError::Other(format!("{arn} was not signed in time")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_at_the_fraction_within_the_jitter_and_before_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        for _ in 0..1000 {
            let at = renew_at(t0, t0 + day, 2.0 / 3.0, 0.05);
            let into = at.duration_since(t0).unwrap().as_secs_f64() / day.as_secs_f64();
            assert!((0.63..=0.70).contains(&into), "{into}");
        }
        let late = renew_at(t0, t0 + day, 0.99, 0.0);
        assert_eq!(late, t0 + day.mul_f64(0.9));
        // A certificate that is already past its end renews at once.
        assert_eq!(renew_at(t0 + day, t0, 2.0 / 3.0, 0.0), t0 + day);
    }
}
