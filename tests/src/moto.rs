//! Starts the moto server (an AWS API emulator) on 127.0.0.1 for Cloud Map
//! and Private CA tests, and builds Weft's Cloud Map discovery and Private
//! CAs against it through the real AWS SDK. It runs moto through
//! `infra/tests/moto_server.py`, which keeps Cloud Map's revision and
//! Private CA's validity as AWS keeps them.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::types::HealthCheckCustomConfig;
use weft_discovery::cloudmap::{ClientOptions, CloudMap, PollConfig, RegistrationMode};

use crate::tools::tool;

/// A running moto server, killed when dropped.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers.
    pub async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::start_on(port).await
    }

    /// Starts moto on `port` (one a client was already pointed at, to test
    /// a backend that comes up late) and waits until it answers.
    pub async fn start_on(port: u16) -> Result<Self> {
        let python = tool("python")?;
        let wrapper = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/tests/moto_server.py");
        let child = Command::new(python)
            .args([wrapper, "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut moto = Self {
            child: Some(child),
            addr,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(child) = moto.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("moto_server exited at start: {status}");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("moto_server did not listen on {addr} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(moto)
    }

    /// The endpoint URL to give the SDK.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An SSM client of this emulator, bounded as a task's would be (one
    /// attempt, short timeouts), with dummy credentials.
    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        self.ssm_client(1, Duration::from_secs(2))
    }

    fn ssm_client(&self, attempts: u32, timeout: Duration) -> aws_sdk_ssm::Client {
        use aws_sdk_ssm::config::retry::RetryConfig;
        use aws_sdk_ssm::config::timeout::TimeoutConfig;
        use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
        aws_sdk_ssm::Client::from_conf(
            aws_sdk_ssm::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .endpoint_url(self.url())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
                .retry_config(RetryConfig::standard().with_max_attempts(attempts))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(1))
                        .operation_timeout(timeout)
                        .build(),
                )
                .build(),
        )
    }

    /// Sets SSM parameter `name` (a String) to `value` on this emulator.
    /// A test's own setup, not what it measures: the emulator's first SSM
    /// request loads its SSM backend, which takes seconds on a busy
    /// machine, so this waits longer than a task's client would.
    pub async fn put_parameter(&self, name: &str, value: &str) -> Result<()> {
        self.ssm_client(3, Duration::from_secs(60))
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .context("PutParameter")?;
        Ok(())
    }

    /// SDK options that reach this emulator with dummy credentials.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            endpoint_url: Some(self.url()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("testing".into(), "testing".into())),
        }
    }

    /// Connects Weft's Cloud Map backend to `namespace` on this emulator.
    pub async fn cloud_map(
        &self,
        namespace: &str,
        mode: RegistrationMode,
        poll: PollConfig,
    ) -> Result<CloudMap> {
        Ok(CloudMap::connect(namespace, &self.options(), mode, poll).await?)
    }

    /// Creates an HTTP namespace and, in it, services with custom health
    /// checks, as the infrastructure templates do in AWS.
    pub async fn create_namespace(
        &self,
        client: &Client,
        namespace: &str,
        services: &[&str],
    ) -> Result<()> {
        client
            .create_http_namespace()
            .name(namespace)
            .send()
            .await
            .context("CreateHttpNamespace")?;
        let namespace_id = client
            .list_namespaces()
            .send()
            .await?
            .namespaces()
            .iter()
            .find(|n| n.name() == Some(namespace))
            .and_then(|n| n.id().map(str::to_owned))
            .context("the new namespace is not listed")?;
        for service in services {
            client
                .create_service()
                .name(*service)
                .namespace_id(&namespace_id)
                .health_check_custom_config(HealthCheckCustomConfig::builder().build())
                .send()
                .await
                .with_context(|| format!("CreateService {service}"))?;
        }
        Ok(())
    }

    /// A Private CA client for this emulator.
    pub async fn private_ca(&self) -> aws_sdk_acmpca::Client {
        let shared = weft_discovery::cloudmap::shared_config(&self.options()).await;
        aws_sdk_acmpca::Client::new(&shared)
    }

    /// Creates an active root CA named `common_name`, as an operator (or
    /// the deployment's template) would: create, sign its own CSR with the
    /// root template, import the result. Returns its ARN.
    pub async fn create_root_ca(&self, common_name: &str) -> Result<String> {
        use aws_sdk_acmpca::types::{
            Asn1Subject, CertificateAuthorityConfiguration, CertificateAuthorityType, KeyAlgorithm,
            SigningAlgorithm,
        };
        let pca = self.private_ca().await;
        let arn = pca
            .create_certificate_authority()
            .certificate_authority_type(CertificateAuthorityType::Root)
            .certificate_authority_configuration(
                CertificateAuthorityConfiguration::builder()
                    .key_algorithm(KeyAlgorithm::Rsa2048)
                    .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
                    .subject(Asn1Subject::builder().common_name(common_name).build())
                    .build()?,
            )
            .send()
            .await
            .context("CreateCertificateAuthority")?
            .certificate_authority_arn()
            .context("no CA ARN")?
            .to_owned();
        self.sign_root_ca(&arn, 10).await?;
        Ok(arn)
    }

    /// Renews the root CA `arn`'s own certificate (same key, a new
    /// validity), as an operator renews a Private CA.
    pub async fn renew_root_ca(&self, arn: &str) -> Result<()> {
        self.sign_root_ca(arn, 11).await
    }

    /// Signs the root CA's CSR for `years` and imports the result.
    async fn sign_root_ca(&self, arn: &str, years: i64) -> Result<()> {
        use aws_sdk_acmpca::primitives::Blob;
        use aws_sdk_acmpca::types::{SigningAlgorithm, Validity, ValidityPeriodType};
        let pca = self.private_ca().await;
        let csr = pca
            .get_certificate_authority_csr()
            .certificate_authority_arn(arn)
            .send()
            .await
            .context("GetCertificateAuthorityCsr")?
            .csr()
            .context("no CSR")?
            .to_owned();
        let cert_arn = pca
            .issue_certificate()
            .certificate_authority_arn(arn)
            .csr(Blob::new(csr.as_bytes()))
            .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
            .template_arn("arn:aws:acm-pca:::template/RootCACertificate/V1")
            .validity(
                Validity::builder()
                    .r#type(ValidityPeriodType::Years)
                    .value(years)
                    .build()?,
            )
            .send()
            .await
            .context("IssueCertificate (root)")?
            .certificate_arn()
            .context("no certificate ARN")?
            .to_owned();
        let cert = pca
            .get_certificate()
            .certificate_authority_arn(arn)
            .certificate_arn(&cert_arn)
            .send()
            .await
            .context("GetCertificate (root)")?
            .certificate()
            .context("no certificate")?
            .to_owned();
        pca.import_certificate_authority_certificate()
            .certificate_authority_arn(arn)
            .certificate(Blob::new(cert.as_bytes()))
            .send()
            .await
            .context("ImportCertificateAuthorityCertificate")?;
        Ok(())
    }

    /// Stops the emulator now (to test outages).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
