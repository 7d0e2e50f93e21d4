//! What a Private CA identity needs to know, read from `WEFT_PCA_*` and
//! `WEFT_CERT_*` variables; every value is checked before anything is
//! asked of AWS, and an error names its variable.

use std::time::Duration;

use weft_discovery::cloudmap::ClientOptions;

use crate::identity::SpiffeId;
use crate::trust::Scopes;

/// A Private CA identity's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The CA that signs this process's certificates (`WEFT_PCA_ARN`).
    pub issuing_ca: String,
    /// Who this process is: `spiffe://<WEFT_TRUST_DOMAIN>/service/<name>`.
    pub identity: SpiffeId,
    /// DNS names for callers outside the mesh (`WEFT_PCA_DNS_NAMES`).
    pub dns_names: Vec<String>,
    /// Which CAs vouch for which identities, as (scope key, CA) pairs
    /// (`WEFT_PCA_TRUST`, `key=ca,…`; default `*=` the issuing CA). A CA is
    /// a Private CA ARN, or the path of a PEM file of CA certificates (read
    /// again at every refresh), such as the CA of operators' certificates.
    /// See [`Scopes`] for the keys.
    pub trust: Vec<(String, String)>,
    /// How long each certificate is asked to be valid
    /// (`WEFT_CERT_LIFETIME_S`, default a day).
    pub lifetime: Duration,
    /// The fraction of the lifetime at which to renew
    /// (`WEFT_CERT_RENEW_AT`, default 2/3; between 0.1 and 0.9).
    pub renew_at: f64,
    /// ± spread of renewal and refresh times, a fraction.
    pub jitter: f64,
    /// How often to fetch the CA certificates again
    /// (`WEFT_PCA_TRUST_REFRESH_S`, default an hour).
    pub trust_refresh: Duration,
    /// `IssueCertificate`'s `SigningAlgorithm`, which must match the CA's
    /// key (`WEFT_PCA_SIGNING_ALGORITHM`, default `SHA256WITHECDSA`).
    pub signing_algorithm: String,
    /// The certificate template (`WEFT_PCA_TEMPLATE_ARN`, default
    /// `EndEntityCertificate/V1`, which keeps the CSR's SANs).
    pub template_arn: String,
    /// How long to keep trying for the first certificate before giving up.
    pub start_timeout: Duration,
    /// Where AWS is (the standard chain unless set, as for tests).
    pub aws: ClientOptions,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct SettingsError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn invalid(name: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        name,
        reason: reason.into(),
    }
}

/// The default template: an end-entity certificate whose SANs come from
/// the CSR.
pub const END_ENTITY_TEMPLATE: &str = "arn:aws:acm-pca:::template/EndEntityCertificate/V1";

impl Settings {
    /// The settings for `service`, or `None` when `WEFT_PCA_ARN` is unset
    /// (certificates come from files then).
    pub fn from_lookup(
        service: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, SettingsError> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(issuing_ca) = var("WEFT_PCA_ARN") else {
            return Ok(None);
        };
        if !issuing_ca.starts_with("arn:") || !issuing_ca.contains(":certificate-authority/") {
            return Err(invalid("WEFT_PCA_ARN", "not a Private CA ARN"));
        }
        let trust_domain = var("WEFT_TRUST_DOMAIN")
            .ok_or_else(|| invalid("WEFT_TRUST_DOMAIN", "required with WEFT_PCA_ARN"))?;
        let identity = SpiffeId::service(&trust_domain, service)
            .map_err(|e| invalid("WEFT_TRUST_DOMAIN", e.to_string()))?;
        let dns_names: Vec<String> = var("WEFT_PCA_DNS_NAMES")
            .map(|v| {
                v.split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(bad) = dns_names.iter().find(|n| {
            n.len() > 253
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }) {
            return Err(invalid(
                "WEFT_PCA_DNS_NAMES",
                format!("{bad:?} is not a DNS name"),
            ));
        }
        let trust = match var("WEFT_PCA_TRUST") {
            None => vec![("*".to_owned(), issuing_ca.clone())],
            Some(list) => parse_trust(&list)?,
        };
        let issuing_covers_self = trust
            .iter()
            .any(|(key, ca)| *ca == issuing_ca && Scopes::keys_for(&identity).contains(key));
        if !issuing_covers_self {
            return Err(invalid(
                "WEFT_PCA_TRUST",
                format!("no entry lets the issuing CA vouch for {identity}; peers would refuse it"),
            ));
        }
        let seconds = |name: &'static str, default: u64| -> Result<Duration, SettingsError> {
            match var(name) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => match v.parse::<u64>() {
                    Ok(0) => Err(invalid(name, "must be at least 1")),
                    Ok(n) => Ok(Duration::from_secs(n)),
                    Err(e) => Err(invalid(name, e.to_string())),
                },
            }
        };
        let renew_at = match var("WEFT_CERT_RENEW_AT") {
            None => 2.0 / 3.0,
            Some(v) => match v.parse::<f64>() {
                Ok(f) if (0.1..=0.9).contains(&f) => f,
                Ok(_) => return Err(invalid("WEFT_CERT_RENEW_AT", "must be between 0.1 and 0.9")),
                Err(e) => return Err(invalid("WEFT_CERT_RENEW_AT", e.to_string())),
            },
        };
        Ok(Some(Self {
            issuing_ca,
            identity,
            dns_names,
            trust,
            lifetime: seconds("WEFT_CERT_LIFETIME_S", 86_400)?,
            renew_at,
            jitter: 0.05,
            trust_refresh: seconds("WEFT_PCA_TRUST_REFRESH_S", 3_600)?,
            signing_algorithm: var("WEFT_PCA_SIGNING_ALGORITHM")
                .unwrap_or_else(|| "SHA256WITHECDSA".to_owned()),
            template_arn: var("WEFT_PCA_TEMPLATE_ARN")
                .unwrap_or_else(|| END_ENTITY_TEMPLATE.to_owned()),
            start_timeout: Duration::from_secs(60),
            aws: ClientOptions::default(),
        }))
    }
}

/// Parses `key=arn,key=arn`; a key may repeat (a CA being rotated in).
fn parse_trust(list: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let mut trust = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, ca)) = entry.split_once('=') else {
            return Err(invalid(
                "WEFT_PCA_TRUST",
                format!("{entry:?} is not key=arn"),
            ));
        };
        let (key, ca) = (key.trim(), ca.trim());
        if !Scopes::valid_key(key) {
            return Err(invalid(
                "WEFT_PCA_TRUST",
                format!("{key:?} is not service/<name>, operator/<name>, <kind>/* or *"),
            ));
        }
        let arn = ca.starts_with("arn:") && ca.contains(":certificate-authority/");
        if !arn && !ca.starts_with('/') {
            return Err(invalid(
                "WEFT_PCA_TRUST",
                format!("{ca:?} is neither a Private CA ARN nor an absolute path"),
            ));
        }
        trust.push((key.to_owned(), ca.to_owned()));
    }
    if trust.is_empty() {
        return Err(invalid("WEFT_PCA_TRUST", "lists no CA"));
    }
    Ok(trust)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CA: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/a";
    const OTHER: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/b";

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, SettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup("inventory", |name| vars.get(name).cloned())
    }

    #[test]
    fn without_an_arn_there_is_no_private_ca() {
        assert!(settings(&[]).unwrap().is_none());
    }

    #[test]
    fn defaults_renew_at_two_thirds_of_a_day_trusting_the_issuing_ca() {
        let s = settings(&[("WEFT_PCA_ARN", CA), ("WEFT_TRUST_DOMAIN", "td")])
            .unwrap()
            .unwrap();
        assert_eq!(s.identity.to_string(), "spiffe://td/service/inventory");
        assert_eq!(s.lifetime, Duration::from_secs(86_400));
        assert!((s.renew_at - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.trust, vec![("*".to_owned(), CA.to_owned())]);
        assert_eq!(s.template_arn, END_ENTITY_TEMPLATE);
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let base = [("WEFT_PCA_ARN", CA), ("WEFT_TRUST_DOMAIN", "td")];
        let cases: &[(&str, &str)] = &[
            ("WEFT_CERT_RENEW_AT", "0.95"),
            ("WEFT_CERT_RENEW_AT", "x"),
            ("WEFT_CERT_LIFETIME_S", "0"),
            ("WEFT_PCA_TRUST_REFRESH_S", "-1"),
            ("WEFT_PCA_DNS_NAMES", "a b"),
            ("WEFT_PCA_TRUST", "inventory=arn:x"),
            ("WEFT_PCA_TRUST", "service/inventory=relative/ca.pem"),
            ("WEFT_PCA_TRUST", "service/inventory"),
            (
                "WEFT_PCA_TRUST",
                "service/payments=arn:aws:acm-pca:r:1:certificate-authority/a",
            ),
        ];
        for (name, value) in cases {
            let mut vars = base.to_vec();
            vars.push((name, value));
            let err = settings(&vars).unwrap_err();
            assert_eq!(err.name, *name, "{value}");
        }
        assert_eq!(
            settings(&[("WEFT_PCA_ARN", CA)]).unwrap_err().name,
            "WEFT_TRUST_DOMAIN"
        );
        assert_eq!(
            settings(&[("WEFT_PCA_ARN", "ca")]).unwrap_err().name,
            "WEFT_PCA_ARN"
        );
    }

    #[test]
    fn a_rotation_lists_two_cas_for_one_identity() {
        let trust = format!(
            "service/inventory={CA},service/inventory={OTHER},operator/*=/run/weft/operators.pem"
        );
        let s = settings(&[
            ("WEFT_PCA_ARN", CA),
            ("WEFT_TRUST_DOMAIN", "td"),
            ("WEFT_PCA_TRUST", &trust),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.trust.len(), 3);
    }
}
