//! `weft db bootstrap --service NAME`: makes a service's database roles and
//! schema (weft_service::roles), as the database's administrator, from the
//! environment a one-off task gets: `DATABASE_URL` and `DATABASE_PASSWORD`
//! (the administrator), `WEFT_DB_CA` (verify the server over TLS),
//! `WEFT_DB_SERVICE_PASSWORD` and `WEFT_DB_MIGRATE_PASSWORD` (the passwords
//! the service's two login roles are created with; `--reset-passwords` sets
//! them on existing roles too). Idempotent: safe at every start.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use weft_service::roles::{Passwords, bootstrap};

/// How long to wait for the database (it may start with the deployment).
const WITHIN: Duration = Duration::from_secs(120);

/// What `weft db bootstrap` takes.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The service whose roles and schema to make (inventory, payments,
    /// orders, or one of your own: its registered name).
    #[arg(long)]
    service: String,
    /// Set the passwords of roles that exist too (by default only a role's
    /// creation sets it; afterwards it belongs to its rotation).
    #[arg(long)]
    reset_passwords: bool,
}

/// Runs the bootstrap for one service.
pub async fn run(args: BootstrapArgs) -> Result<()> {
    // The name becomes a schema and part of role names
    // (`DATABASE_SERVICE_migrate`), which PostgreSQL cuts at 63 bytes:
    // 30 leaves the database's name 24.
    let name = args.service.as_str();
    let valid = (1..=30).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        anyhow::bail!(
            "--service: {name:?} is not a service name (1 to 30 lowercase letters, digits, '-' or '_', starting with a letter)"
        );
    }
    let url =
        std::env::var("DATABASE_URL").context("DATABASE_URL (the administrator's) is not set")?;
    let mut config: tokio_postgres::Config = url.parse().context("DATABASE_URL")?;
    if let Ok(password) = std::env::var("DATABASE_PASSWORD") {
        config.password(password);
    }
    let tls = match std::env::var("WEFT_DB_CA") {
        Ok(ca) => {
            weft_service::pg_tls::require_tls(&mut config)
                .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
            Some(weft_service::pg_tls::PgTls::from_bundle(ca.as_ref()).context("WEFT_DB_CA")?)
        }
        Err(_) => None,
    };
    let passwords = Passwords {
        service: std::env::var("WEFT_DB_SERVICE_PASSWORD").ok(),
        migrator: std::env::var("WEFT_DB_MIGRATE_PASSWORD").ok(),
        reset: args.reset_passwords,
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut delay = Duration::from_millis(200);
    let (client, driver) = loop {
        match weft_service::pg_tls::connect(&config, tls.as_ref()).await {
            Ok(pair) => break pair,
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                eprintln!("database not reachable yet ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context(format!("database not reachable within {WITHIN:?}")),
        }
    };
    let roles = bootstrap(&client, &args.service, &passwords)
        .await
        .with_context(|| format!("bootstrapping {}", args.service))?;
    drop(client);
    driver.abort();
    println!(
        "{}: schema {} owned by {}; migrates as {}, serves as {}",
        args.service, roles.schema, roles.owner, roles.migrator, roles.service
    );
    Ok(())
}
