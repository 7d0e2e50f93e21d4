//! Applies a service's schema migrations at start-up, once per database even
//! when several replicas start together.

use std::time::Duration;

use tokio_postgres::NoTls;

/// An arbitrary but fixed advisory-lock key, the same for every service:
/// replicas starting at once queue on it, so only one applies the migrations
/// and the others find them done (services sharing a database also take
/// turns, which costs nothing at start-up).
const MIGRATION_LOCK: i64 = 0x5745_4654_4d49_4701; // "WEFTMIG\x01"

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database did not answer within the start-up bound.
    #[error("database not reachable within {0:?}: {1}")]
    Unreachable(Duration, tokio_postgres::Error),
    /// A query failed.
    #[error("database error while migrating: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
}

/// One connection, with TLS when given, its driver running in a task.
async fn connect(
    config: &tokio_postgres::Config,
    tls: Option<&crate::pg_tls::PgTls>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let log = |result: Result<(), tokio_postgres::Error>| {
        if let Err(e) = result {
            tracing::warn!(error = %e, "migration connection ended");
        }
    };
    Ok(match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            (client, tokio::spawn(async move { log(connection.await) }))
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            (client, tokio::spawn(async move { log(connection.await) }))
        }
    })
}

/// Connects (retrying with backoff until `within` has passed, because the
/// database may start after us) and applies every pending migration of
/// `runner` (from `refinery::embed_migrations!`, with the service's own
/// migration table).
pub async fn migrate(
    service: &crate::Config,
    runner: refinery::Runner,
) -> Result<(), MigrateError> {
    let config = &service.database;
    let within = service.startup_timeout;
    let deadline = tokio::time::Instant::now() + within;
    let mut delay = Duration::from_millis(100);
    let (mut client, driver) = loop {
        match connect(config, service.database_tls.as_ref()).await {
            Ok(pair) => break pair,
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(MigrateError::Unreachable(within, e)),
        }
    };
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = runner.run_async(&mut client).await;
    // Unlock even when migrating failed; closing the connection would too.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    driver.abort();
    let report = report?;
    unlock?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}
