//! SPIFFE-style identities: `spiffe://<trust-domain>/service/<name>` for
//! services and `spiffe://<trust-domain>/operator/<name>` for people and
//! tools. A certificate's identity is its URI SAN; endpoints are IP
//! addresses, so DNS names in certificates prove nothing and are not checked.

pub mod certs;
pub mod policy;
pub mod private_ca;
pub mod trust;

use std::fmt;

use rustls::pki_types::CertificateDer;

/// What kind of principal an identity names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Weft service.
    Service,
    /// An operator (a person or a tool such as grpcurl).
    Operator,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Operator => "operator",
        }
    }
}

/// A parsed `spiffe://` identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    kind: Kind,
    name: String,
}

/// Why a string or certificate does not carry a usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string is not `spiffe://<td>/<service|operator>/<name>`.
    #[error(
        "{0:?} is not spiffe://<trust-domain>/service/<name> or spiffe://<trust-domain>/operator/<name>"
    )]
    Malformed(String),
    /// The certificate cannot be parsed.
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// The certificate has no (or more than one) SPIFFE URI SAN.
    #[error("certificate carries {0} SPIFFE URI SANs; exactly one is required")]
    SanCount(usize),
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        })
}

impl SpiffeId {
    /// A service identity.
    pub fn service(trust_domain: &str, name: &str) -> Result<Self, IdentityError> {
        Self::new(trust_domain, Kind::Service, name)
    }

    /// An operator identity.
    pub fn operator(trust_domain: &str, name: &str) -> Result<Self, IdentityError> {
        Self::new(trust_domain, Kind::Operator, name)
    }

    fn new(trust_domain: &str, kind: Kind, name: &str) -> Result<Self, IdentityError> {
        if !valid_label(trust_domain) || !valid_label(name) {
            return Err(IdentityError::Malformed(format!(
                "spiffe://{trust_domain}/{}/{name}",
                kind.segment()
            )));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            kind,
            name: name.to_owned(),
        })
    }

    /// Parses `spiffe://<td>/<service|operator>/<name>`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(td), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let kind = match kind {
            "service" => Kind::Service,
            "operator" => Kind::Operator,
            _ => return Err(malformed()),
        };
        Self::new(td, kind, name).map_err(|_| malformed())
    }

    /// Reads the certificate's SPIFFE id: its one URI SAN, which must be a
    /// SPIFFE id (the X.509-SVID rule; a second URI, of any scheme, or a
    /// scheme in capitals, is refused).
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let sans = parsed
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let uris: Vec<&str> = sans
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [uri] => Self::parse(uri),
            other => Err(IdentityError::SanCount(other.len())),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Service or operator.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The service's or operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.trust_domain,
            self.kind.segment(),
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id = SpiffeId::parse("spiffe://weft.local/service/inventory").unwrap();
        assert_eq!(id.trust_domain(), "weft.local");
        assert_eq!(id.kind(), Kind::Service);
        assert_eq!(id.name(), "inventory");
        assert_eq!(id.to_string(), "spiffe://weft.local/service/inventory");
        assert_eq!(
            SpiffeId::parse("spiffe://weft.local/operator/alice")
                .unwrap()
                .kind(),
            Kind::Operator
        );
        for bad in [
            "https://weft.local/service/x",
            "spiffe://weft.local/service",
            "spiffe://weft.local/robot/x",
            "spiffe://weft.local/service/x/y",
            "spiffe:///service/x",
            "spiffe://Weft/service/x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod san_tests {
    use rcgen::{CertificateParams, KeyPair, SanType};
    use rustls::pki_types::CertificateDer;

    use super::*;

    fn cert(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params
            .subject_alt_names
            .push(SanType::DnsName("localhost".try_into().unwrap()));
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn exactly_one_uri_san_and_it_is_a_spiffe_id() {
        let ok = cert(&["spiffe://weft.local/service/inventory"]);
        assert_eq!(SpiffeId::from_certificate(&ok).unwrap().name(), "inventory");
        let two = cert(&[
            "spiffe://weft.local/service/inventory",
            "https://example.com/x",
        ]);
        assert!(matches!(
            SpiffeId::from_certificate(&two),
            Err(IdentityError::SanCount(2))
        ));
        let shouting = cert(&["SPIFFE://weft.local/service/inventory"]);
        assert!(matches!(
            SpiffeId::from_certificate(&shouting),
            Err(IdentityError::Malformed(_))
        ));
        let none = cert(&[]);
        assert!(matches!(
            SpiffeId::from_certificate(&none),
            Err(IdentityError::SanCount(0))
        ));
    }
}
