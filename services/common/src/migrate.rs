//! Applies a service's schema migrations at start-up, once per database even
//! when several replicas start together.

use std::time::Duration;

/// An arbitrary but fixed advisory-lock key, the same for every service:
/// replicas starting at once queue on it, so only one applies the migrations
/// and the others find them done (services sharing a database also take
/// turns, which costs nothing at start-up). A database bootstrap takes it
/// too ([`crate::roles::bootstrap`]): its grants on a schema's tables and a
/// migration's changes to them update the same catalog rows.
pub const MIGRATION_LOCK: i64 = 0x5745_4654_4d49_4701; // "WEFTMIG\x01"

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

/// Connects (retrying with backoff until `within` has passed, because the
/// database may start after us) and applies every pending migration of
/// `runner` (from `refinery::embed_migrations!`), keeping its history in
/// `schema` (see [`crate::roles::Roles::migration_table`]). Connects as the
/// migrating role when the configuration names one
/// (`WEFT_DB_MIGRATE_USER`), else with the service's own credentials.
pub async fn migrate(
    service: &crate::Config,
    mut runner: refinery::Runner,
    schema: &str,
) -> Result<(), MigrateError> {
    runner.set_migration_table_name(crate::roles::Roles::migration_table(schema));
    let config = service
        .migrate_database
        .as_ref()
        .unwrap_or(&service.database);
    let within = service.startup_timeout;
    let deadline = tokio::time::Instant::now() + within;
    let mut delay = Duration::from_millis(100);
    let (mut client, driver) = loop {
        match crate::pg_tls::connect(config, service.database_tls.as_ref()).await {
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
    let report = match prepare_schema(&client, schema).await {
        Ok(()) => runner
            .run_async(&mut client)
            .await
            .map_err(MigrateError::from),
        Err(e) => Err(e.into()),
    };
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

/// The schema the history lives in, before refinery looks for it: made when
/// missing (a development database, where the service's credentials may);
/// and a history an earlier version kept in `public` is moved in (the
/// bootstrap does this where the service may not).
async fn prepare_schema(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    use crate::roles::{Roles, ident, relation_exists};
    let quoted = ident(schema);
    let exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .await?;
    }
    let legacy = Roles::legacy_migration_table(schema);
    if relation_exists(client, &legacy).await?
        && !relation_exists(client, &Roles::migration_table(schema)).await?
    {
        client
            .batch_execute(&format!("ALTER TABLE {legacy} SET SCHEMA {quoted}"))
            .await?;
    }
    Ok(())
}
