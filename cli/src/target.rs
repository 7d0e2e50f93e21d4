//! How the operator commands reach a mesh: the discovery backend, the
//! operator's certificate, and mTLS channels that expect each service's
//! own identity.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use weft_discovery::{Filter, Resolver, Snapshot};
use weft_mesh::{CertStore, ClientOptions, IdentityPaths, MeshChannel, MeshClient, SpiffeId};

/// Where the mesh is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// The discovery setting (cloudmap://NAMESPACE, local:///DIR, static://…);
    /// the default is the directory `weft up` uses.
    #[arg(long, env = "WEFT_DISCOVERY")]
    pub discovery: Option<String>,
    /// The directory with ca.pem and the operator's certificate.
    #[arg(long, env = "WEFT_CERTS_DIR", default_value = ".weft/certs")]
    pub certs: PathBuf,
    /// The operator: its certificate is operator-NAME.pem / .key.
    #[arg(long, env = "WEFT_OPERATOR", default_value = "dev")]
    pub operator: String,
}

impl MeshArgs {
    /// The discovery setting, `weft up`'s directory when none is given.
    pub fn setting(&self) -> Result<String> {
        match &self.discovery {
            Some(s) => Ok(s.clone()),
            None => Ok(format!(
                "local://{}",
                std::env::current_dir()?.join(".weft/discovery").display()
            )),
        }
    }

    /// The operator's certificate, key and trust bundle: `mesh-ca.pem`
    /// where the services' certificates come from CAs other than the one
    /// that issued the operator's (Private CA; `scripts/deploy` writes it),
    /// else the operators' `ca.pem`.
    pub fn identity(&self) -> IdentityPaths {
        let mesh_ca = self.certs.join("mesh-ca.pem");
        IdentityPaths {
            cert: self.certs.join(format!("operator-{}.pem", self.operator)),
            key: self.certs.join(format!("operator-{}.key", self.operator)),
            trust_bundle: if mesh_ca.is_file() {
                mesh_ca
            } else {
                self.certs.join("ca.pem")
            },
        }
    }
}

/// A connection to a mesh as an operator.
#[derive(Debug)]
pub struct Mesh {
    client: MeshClient,
}

impl Mesh {
    /// Opens discovery and loads the operator's certificate.
    pub async fn connect(args: &MeshArgs) -> Result<Self> {
        let identity = args.identity();
        let store = CertStore::load(identity.clone(), Duration::from_secs(60)).with_context(|| {
            format!(
                "loading the operator certificate {} (make one with `weft certs issue --dir {} --operator {}`, or run `weft up`, which does)",
                identity.cert.display(),
                args.certs.display(),
                args.operator
            )
        })?;
        let setting = args.setting()?;
        let client = MeshClient::connect(&setting, Some(store), &[weft_proto::FILE_DESCRIPTOR_SET])
            .await
            .with_context(|| format!("discovery {setting}"))?;
        Ok(Self { client })
    }

    /// The endpoints of `service` once discovery has answered (within 5 s).
    pub async fn instances(&self, service: &str) -> Result<Snapshot> {
        let mut rx = self.client.discovery().watch(service, &Filter::any())?;
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| s.fetched_at.is_some() || s.last_error.is_some()),
        )
        .await;
        match answered {
            Ok(Ok(snapshot)) => Ok(snapshot.clone()),
            _ => bail!("discovery did not answer for {service} within 5 s"),
        }
    }

    /// Every service discovery knows.
    pub async fn services(&self) -> Result<Vec<String>> {
        Ok(self.client.discovery().services().await?)
    }

    /// The identity `service` must present.
    pub fn expected(&self, service: &str) -> Result<SpiffeId> {
        self.client
            .expected(service)?
            .context("the operator's commands always run over mTLS")
    }

    /// The operator's certificates.
    pub fn store(&self) -> Result<&CertStore> {
        self.client
            .identity()
            .context("the operator's commands always run over mTLS")
    }

    /// Fails with advice when discovery lists no instance of `service`.
    pub async fn require(&self, service: &str) -> Result<()> {
        let snapshot = self.instances(service).await?;
        if let Some(e) = &snapshot.last_error {
            bail!("discovery failed for {service}: {e}");
        }
        if snapshot.endpoints.is_empty() {
            bail!(
                "no instance of {service} is registered: is the mesh running (`weft up`), and is --discovery (WEFT_DISCOVERY) the one it uses?"
            );
        }
        Ok(())
    }

    /// A balanced mTLS channel to `service`, retrying what is safe.
    pub fn channel(&self, service: &str, options: ClientOptions) -> Result<MeshChannel> {
        Ok(self.client.channel_with(service, options)?)
    }
}
