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
pub async fn connect(
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
    let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
    let exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .await?;
    }
    let old = format!("public.weft_{schema}_migrations");
    let moved: Option<String> = client
        .query_one(
            "SELECT to_regclass($1)::text",
            &[&crate::roles::Roles::migration_table(schema)],
        )
        .await?
        .get(0);
    let left: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&old])
        .await?
        .get(0);
    if moved.is_none() && left.is_some() {
        client
            .batch_execute(&format!("ALTER TABLE {old} SET SCHEMA {quoted}"))
            .await?;
    }
    Ok(())
}
