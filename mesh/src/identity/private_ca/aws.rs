//! [`Authority`] over the AWS SDK for ACM Private CA, counting the calls it
//! makes (what a task costs in API calls per day is a figure we report).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use aws_sdk_acmpca::Client;
use aws_sdk_acmpca::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{SigningAlgorithm, Validity, ValidityPeriodType};

use super::{Authority, PcaError, Settings};

/// How many calls this process made to Private CA, by kind.
#[derive(Debug, Default)]
pub struct PcaCalls {
    /// IssueCertificate.
    pub issue: AtomicU64,
    /// GetCertificate.
    pub get: AtomicU64,
    /// GetCertificateAuthorityCertificate.
    pub ca_certificate: AtomicU64,
}

/// Private CA through the AWS SDK.
#[derive(Debug)]
pub struct AwsAuthority {
    client: Client,
    signing: SigningAlgorithm,
    template_arn: String,
    /// The calls made so far.
    pub calls: PcaCalls,
}

impl AwsAuthority {
    /// A client for `settings` (its AWS options, signing algorithm and
    /// template).
    pub async fn connect(settings: &Settings) -> Self {
        let shared = weft_discovery::cloudmap::shared_config(&settings.aws).await;
        Self {
            client: Client::new(&shared),
            signing: SigningAlgorithm::from(settings.signing_algorithm.as_str()),
            template_arn: settings.template_arn.clone(),
            calls: PcaCalls::default(),
        }
    }
}

/// Sorts an SDK error by what the caller should do about it.
fn classify<E, R>(call: &str, e: SdkError<E, R>) -> PcaError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or_default().to_owned();
    let text = format!("{call}: {}", DisplayErrorContext(&e));
    match code.as_str() {
        "ThrottlingException" | "LimitExceededException" | "TooManyRequestsException" => {
            PcaError::Throttled(text)
        }
        "AccessDeniedException" | "AccessDenied" => PcaError::Denied(text),
        _ => PcaError::Other(text),
    }
}

impl Authority for AwsAuthority {
    async fn issue(
        &self,
        ca: &str,
        csr_pem: &str,
        not_after: SystemTime,
    ) -> Result<String, PcaError> {
        self.calls.issue.fetch_add(1, Ordering::Relaxed);
        let until = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|e| PcaError::Other(e.to_string()))?
            .as_secs();
        let validity = Validity::builder()
            .r#type(ValidityPeriodType::Absolute)
            .value(i64::try_from(until).map_err(|e| PcaError::Other(e.to_string()))?)
            .build()
            .map_err(|e| PcaError::Other(e.to_string()))?;
        let out = self
            .client
            .issue_certificate()
            .certificate_authority_arn(ca)
            .csr(Blob::new(csr_pem.as_bytes()))
            .signing_algorithm(self.signing.clone())
            .template_arn(&self.template_arn)
            .validity(validity)
            .send()
            .await
            .map_err(|e| classify("IssueCertificate", e))?;
        out.certificate_arn()
            .map(str::to_owned)
            .ok_or_else(|| PcaError::Unusable("IssueCertificate returned no ARN".into()))
    }

    async fn certificate(
        &self,
        ca: &str,
        certificate_arn: &str,
    ) -> Result<Option<String>, PcaError> {
        self.calls.get.fetch_add(1, Ordering::Relaxed);
        match self
            .client
            .get_certificate()
            .certificate_authority_arn(ca)
            .certificate_arn(certificate_arn)
            .send()
            .await
        {
            Ok(out) => {
                let leaf = out
                    .certificate()
                    .ok_or_else(|| PcaError::Unusable("GetCertificate returned nothing".into()))?;
                Ok(Some(match out.certificate_chain() {
                    Some(chain) => format!("{leaf}\n{chain}\n"),
                    None => format!("{leaf}\n"),
                }))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_request_in_progress_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify("GetCertificate", e)),
        }
    }

    async fn ca_certificate(&self, ca: &str) -> Result<String, PcaError> {
        self.calls.ca_certificate.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client
            .get_certificate_authority_certificate()
            .certificate_authority_arn(ca)
            .send()
            .await
            .map_err(|e| classify("GetCertificateAuthorityCertificate", e))?;
        out.certificate()
            .map(|pem| format!("{pem}\n"))
            .ok_or_else(|| PcaError::Unusable(format!("{ca} has no certificate yet")))
    }
}
