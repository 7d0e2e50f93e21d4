//! `weft`, the operator CLI: `weft up` runs a mesh on this machine (a
//! manifest's services, or Weft's demo) as supervised processes, and `weft
//! logs`, `weft kill` and `weft restart` work on its instances; `weft ls`,
//! `weft health`, `weft call` and `weft load` work on any mesh through its
//! discovery backend; `weft route` changes where calls go, live; `weft
//! certs` makes development certificates.

mod call;
mod db;
mod load;
mod ls;
mod route;
mod status;
mod target;
mod up;

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
    /// Run a mesh here from a manifest (weft.toml; without one, Weft's
    /// demo): a database, certificates, each instance a supervised process,
    /// and a live status table until Ctrl-C.
    Up(up::UpArgs),
    /// Print an instance's log (of a running or stopped `weft up`).
    Logs(up::LogsArgs),
    /// Kill an instance of a running `weft up` at once (SIGKILL), to try a
    /// failure; its supervisor restarts it.
    Kill {
        #[command(flatten)]
        home: up::HomeArgs,
        /// The instance (`inventory-1`).
        instance: String,
    },
    /// Restart a service of a running `weft up`, one instance at a time:
    /// each drains, starts again and is healthy before the next.
    Restart {
        #[command(flatten)]
        home: up::HomeArgs,
        /// The service (`inventory`).
        service: String,
    },
    /// List the instances of each service, with health and attributes.
    Ls {
        #[command(flatten)]
        mesh: target::MeshArgs,
        /// Services to list (default: every service discovery knows).
        services: Vec<String>,
    },
    /// Ask every instance's grpc.health.v1 whether it is serving.
    Health {
        #[command(flatten)]
        mesh: target::MeshArgs,
        /// Services to check (default: every service discovery knows).
        services: Vec<String>,
    },
    /// Call a method by service name, JSON in and out, e.g.
    /// `weft call orders/GetOrder -d '{"order_id":"…"}'`.
    Call {
        #[command(flatten)]
        mesh: target::MeshArgs,
        /// SERVICE/METHOD: `orders/PlaceOrder` or `weft.orders.v1.OrdersService/PlaceOrder`.
        target: String,
        /// The request as JSON (proto3 JSON mapping).
        #[arg(short = 'd', long = "data", default_value = "{}")]
        data: String,
    },
    /// Place a steady stream of demo orders, with a progress line.
    Load {
        #[command(flatten)]
        mesh: target::MeshArgs,
        #[command(flatten)]
        load: load::LoadArgs,
    },
    /// The live route table: show it, set a service's split, or shift
    /// calls to a new version step by step with automatic rollback.
    Route(route::RouteArgs),
    /// Development certificates: a CA, and certificates for services and operators.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The database's roles: one per service, confined to its schema.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Make (or bring up to date) a service's roles and schema, as the
    /// database's administrator; see `weft_service::roles`.
    Bootstrap(db::BootstrapArgs),
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
    /// The trust domain of the identities: given to `init` (default
    /// weft.local), which records it beside the CA; `issue` takes the CA's
    /// and refuses a different one.
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // What went wrong and its causes, without a backtrace: the
            // messages say what to do next.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // As the services read it: hybrid post-quantum unless set to classical.
    if let Ok(kx) = std::env::var("WEFT_TLS_KEY_EXCHANGE") {
        let kx = kx
            .parse()
            .map_err(|e: String| anyhow::anyhow!("WEFT_TLS_KEY_EXCHANGE: {e}"))?;
        weft_mesh::provider::set_key_exchange(kx);
    }
    if let Command::Certs(certs) = command {
        return run_certs(certs);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::Up(args) => up::run(args).await,
            Command::Logs(args) => up::logs(args).await,
            Command::Kill { home, instance } => {
                weft::control::ask(&home.home, &weft::control::Request::Kill(instance)).await
            }
            Command::Restart { home, service } => {
                weft::control::ask(&home.home, &weft::control::Request::Restart(service)).await
            }
            Command::Ls { mesh, services } => ls::ls(&mesh, &services).await,
            Command::Health { mesh, services } => ls::health(&mesh, &services).await,
            Command::Call { mesh, target, data } => call::run(&mesh, &target, &data).await,
            Command::Load { mesh, load } => load::run(&mesh, load).await,
            Command::Route(args) => route::run(args).await,
            Command::Certs(_) => Ok(()),
            Command::Db(DbCommand::Bootstrap(args)) => db::run(args).await,
        }
    })
}

fn run_certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { common, days } => {
            let trust_domain = common.trust_domain.as_deref().unwrap_or("weft.local");
            let ca = DevCa::create(trust_domain, Validity::days(days))?;
            ca.write(&common.dir, common.force)?;
            println!("created CA for {trust_domain} in {}", common.dir.display());
        }
        CertsCommand::Issue {
            common,
            service,
            operator,
            days,
            sans,
        } => {
            let ca = DevCa::load(&common.dir).with_context(|| {
                format!(
                    "loading the CA from {} (run `weft certs init` first)",
                    common.dir.display()
                )
            })?;
            // The CA's trust domain, so certificates always match the mesh
            // they are for: a different --trust-domain is a mistake.
            let trust_domain = match (ca.trust_domain(), common.trust_domain) {
                (Some(ca_domain), Some(given)) if ca_domain != given => anyhow::bail!(
                    "the CA in {} is for trust domain {ca_domain}, not {given}",
                    common.dir.display()
                ),
                (Some(ca_domain), _) => ca_domain.to_owned(),
                (None, given) => given.unwrap_or_else(|| "weft.local".to_owned()),
            };
            let (id, stem) = match (service, operator) {
                (Some(name), _) => (SpiffeId::service(&trust_domain, &name)?, name),
                (None, Some(name)) => (
                    SpiffeId::operator(&trust_domain, &name)?,
                    format!("operator-{name}"),
                ),
                (None, None) => anyhow::bail!("give --service NAME or --operator NAME"),
            };
            let issued = ca.issue(&id, Validity::days(days), &sans)?;
            let (cert, key) = issued.write(&common.dir, &stem, common.force)?;
            println!("issued {id}: {} {}", cert.display(), key.display());
        }
    }
    Ok(())
}
