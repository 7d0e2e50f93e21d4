//! `weft`, the operator CLI. Today: `weft certs` makes a development CA and
//! issues service and operator certificates.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use weft::certs::{DevCa, Validity};
use weft_mesh::SpiffeId;

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Operate a Weft mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Development certificates: a CA, and certificates for services and operators.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a development CA (ca.pem, ca.key) in DIR.
    Init {
        #[command(flatten)]
        common: Common,
        /// Validity of the CA in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a certificate signed by the CA in DIR.
    Issue {
        #[command(flatten)]
        common: Common,
        /// Issue for this service: spiffe://TD/service/NAME, written as NAME.pem/.key.
        #[arg(
            long,
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        service: Option<String>,
        /// Issue for this operator: spiffe://TD/operator/NAME, written as operator-NAME.pem/.key.
        #[arg(long)]
        operator: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Extra DNS names or IP addresses (for tools such as grpcurl that check them).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Where the CA and certificates live.
    #[arg(long, env = "WEFT_CERTS_DIR", default_value = "certs")]
    dir: PathBuf,
    /// The trust domain of the identities.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "weft.local")]
    trust_domain: String,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Certs(CertsCommand::Init { common, days }) => {
            let ca = DevCa::create(&common.trust_domain, Validity::days(days))?;
            ca.write(&common.dir, common.force)?;
            println!(
                "created CA for {} in {}",
                common.trust_domain,
                common.dir.display()
            );
        }
        Command::Certs(CertsCommand::Issue {
            common,
            service,
            operator,
            days,
            sans,
        }) => {
            let (id, stem) = match (service, operator) {
                (Some(name), _) => (SpiffeId::service(&common.trust_domain, &name)?, name),
                (None, Some(name)) => (
                    SpiffeId::operator(&common.trust_domain, &name)?,
                    format!("operator-{name}"),
                ),
                (None, None) => anyhow::bail!("give --service NAME or --operator NAME"),
            };
            let ca = DevCa::load(&common.dir).with_context(|| {
                format!(
                    "loading the CA from {} (run `weft certs init` first)",
                    common.dir.display()
                )
            })?;
            let issued = ca.issue(&id, Validity::days(days), &sans)?;
            let (cert, key) = issued.write(&common.dir, &stem, common.force)?;
            println!("issued {id}: {} {}", cert.display(), key.display());
        }
    }
    Ok(())
}
