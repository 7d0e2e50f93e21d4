//! The database roles of a service, and the idempotent bootstrap that makes
//! them. Per service, in a database `db`:
//!
//! - `db_svc_owner` (no login) owns the schema `svc` and everything in it
//!   (and may create schemas, which PostgreSQL requires of the migrations'
//!   `CREATE SCHEMA IF NOT EXISTS`; it has no right on anyone else's);
//! - `db_svc_migrate` logs in to migrate and acts as the owner (its sessions
//!   start with `SET ROLE` to it, so what migrations create is the owner's);
//! - `db_svc` logs in to serve: it reads and writes the rows of its own
//!   schema's tables and uses their sequences, and can change nothing else,
//!   not even its own schema's structure.
//!
//! No service connects as the database's administrator; a service's role
//! cannot see another service's schema. The bootstrap runs as the
//! administrator (the RDS master user) and may run again at any time: it
//! creates what is missing (a role with the password it is given), hands objects
//! made by an earlier administrator-run migration to the owner, and moves a
//! service's migration history into its schema.

use tokio_postgres::Client;

/// The names of a service's roles in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// The service's schema.
    pub schema: String,
    /// Owns the schema (no login).
    pub owner: String,
    /// Logs in to migrate, as the owner.
    pub migrator: String,
    /// Logs in to serve.
    pub service: String,
}

impl Roles {
    /// The roles of `service` in `database`: prefixed with the database's
    /// name, because roles belong to the whole server, not one database.
    pub fn of(database: &str, service: &str) -> Self {
        Self {
            schema: service.to_owned(),
            owner: format!("{database}_{service}_owner"),
            migrator: format!("{database}_{service}_migrate"),
            service: format!("{database}_{service}"),
        }
    }

    /// The history refinery keeps of the service's migrations, in its schema.
    pub fn migration_table(service: &str) -> String {
        format!("{service}.weft_{service}_migrations")
    }

    /// Where versions before the roles kept that history.
    pub fn legacy_migration_table(service: &str) -> String {
        format!("public.weft_{service}_migrations")
    }
}

/// Whether the relation `name` (schema-qualified) exists.
pub(crate) async fn relation_exists(
    client: &Client,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    let found: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&name])
        .await?
        .get(0);
    Ok(found.is_some())
}

/// The passwords a role is created with (none: no password, for servers
/// that authenticate otherwise). An existing role keeps its password unless
/// `reset`: after creation the password belongs to its rotation, and a
/// task starting mid-rotation must not set it back.
#[derive(Debug, Clone, Default)]
pub struct Passwords {
    /// The serving role's.
    pub service: Option<String>,
    /// The migrating role's.
    pub migrator: Option<String>,
    /// Set the passwords of roles that exist too.
    pub reset: bool,
}

/// A SQL identifier, quoted.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal, quoted (standard_conforming_strings is on by
/// default; a backslash is then an ordinary character).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

async fn role_exists(client: &Client, role: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_some())
}

/// Creates the role if missing (with `create`'s attributes) and sets its
/// password when one is given.
async fn ensure_role(
    client: &Client,
    role: &str,
    create: &str,
    password: Option<&str>,
    reset: bool,
) -> Result<(), tokio_postgres::Error> {
    let created = !role_exists(client, role).await?;
    if created {
        client
            .batch_execute(&format!("CREATE ROLE {} {create}", ident(role)))
            .await?;
    }
    if let Some(password) = password.filter(|_| created || reset) {
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD {}",
                ident(role),
                literal(password)
            ))
            .await?;
    }
    Ok(())
}

/// Makes `service`'s roles and schema in the database `client` is connected
/// to, as described in the module documentation. Idempotent.
pub async fn bootstrap(
    client: &Client,
    service: &str,
    passwords: &Passwords,
) -> Result<Roles, tokio_postgres::Error> {
    // Every task of every service may run this at once as it starts:
    // creating a role or changing grants concurrently fails, so they take
    // turns (a session lock, released however this ends when the
    // connection closes). Another task's migration may be running too: a
    // grant on its tables and its ALTER TABLE update the same catalog rows
    // ("tuple concurrently updated"), so the bootstrap also waits its turn
    // on the migrations' lock, always after its own (so no two wait on each
    // other).
    client
        .execute("SELECT pg_advisory_lock($1)", &[&BOOTSTRAP_LOCK])
        .await?;
    client
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&crate::migrate::MIGRATION_LOCK],
        )
        .await?;
    let mut attempt = 0;
    let done = loop {
        attempt += 1;
        match bootstrap_locked(client, service, passwords).await {
            // A grant on the database can still meet PostgreSQL's own
            // in-place update of the same catalog row (autovacuum's
            // datfrozenxid), which the lock does not cover: every step is
            // idempotent, so it is run again.
            Err(e) if attempt < BOOTSTRAP_ATTEMPTS && catalog_race(&e) => {
                tracing::info!(error = %e, attempt, "bootstrap met a concurrent catalog update; running it again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                    .await;
            }
            done => break done,
        }
    };
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock($1), pg_advisory_unlock($2)",
            &[&crate::migrate::MIGRATION_LOCK, &BOOTSTRAP_LOCK],
        )
        .await;
    let roles = done?;
    unlocked?;
    Ok(roles)
}

/// How often a bootstrap that met a concurrent catalog update is tried.
const BOOTSTRAP_ATTEMPTS: u32 = 5;

/// PostgreSQL's "tuple concurrently updated" (an internal error with no
/// code of its own), a serialization failure or a deadlock: the statement
/// met another change to the same catalog row, and may simply be run again.
fn catalog_race(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::T_R_SERIALIZATION_FAILURE
            || *db.code() == SqlState::T_R_DEADLOCK_DETECTED
            || db.message().contains("tuple concurrently updated")
    })
}

/// The advisory lock bootstraps take turns on ("WEFTROL\x01").
const BOOTSTRAP_LOCK: i64 = 0x5745_4654_524f_4c01;

async fn bootstrap_locked(
    client: &Client,
    service: &str,
    passwords: &Passwords,
) -> Result<Roles, tokio_postgres::Error> {
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    let roles = Roles::of(&database, service);
    let (schema, owner, migrator, app) = (
        ident(&roles.schema),
        ident(&roles.owner),
        ident(&roles.migrator),
        ident(&roles.service),
    );
    ensure_role(client, &roles.owner, "NOLOGIN", None, false).await?;
    ensure_role(
        client,
        &roles.migrator,
        "LOGIN",
        passwords.migrator.as_deref(),
        passwords.reset,
    )
    .await?;
    ensure_role(
        client,
        &roles.service,
        "LOGIN",
        passwords.service.as_deref(),
        passwords.reset,
    )
    .await?;
    let db = ident(&database);
    // The administrator must be a member of the owner to hand it objects
    // (RDS's master user is not a superuser).
    client
        .batch_execute(&format!(
            "GRANT {owner} TO {migrator};
             GRANT {owner} TO CURRENT_USER;
             ALTER ROLE {migrator} IN DATABASE {db} SET role = {owner_name};
             REVOKE ALL ON DATABASE {db} FROM PUBLIC;
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {migrator}, {app};
             -- Migrations begin with CREATE SCHEMA IF NOT EXISTS, which
             -- PostgreSQL checks against CREATE on the database even when the
             -- schema exists. The owner may thus make schemas (its own); it
             -- gets no right on any other.
             GRANT CREATE ON DATABASE {db} TO {owner};
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner};
             ALTER SCHEMA {schema} OWNER TO {owner};",
            owner_name = literal(&roles.owner),
        ))
        .await?;
    // What an earlier migration made as the administrator becomes the owner's.
    let owned = client
        .query(
            "SELECT c.relname, c.relkind::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                AND pg_get_userbyid(c.relowner) <> $2
                -- A sequence owned by a table column follows its table.
                AND NOT (c.relkind = 'S' AND EXISTS (
                      SELECT 1 FROM pg_depend d
                       WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))",
            &[&roles.schema, &roles.owner],
        )
        .await?;
    for row in owned {
        let (name, kind): (String, String) = (row.get(0), row.get(1));
        let what = match kind.as_str() {
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            "S" => "SEQUENCE",
            _ => "TABLE",
        };
        client
            .batch_execute(&format!(
                "ALTER {what} {schema}.{} OWNER TO {owner}",
                ident(&name)
            ))
            .await?;
    }
    let functions = client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = $1 AND pg_get_userbyid(p.proowner) <> $2",
            &[&roles.schema, &roles.owner],
        )
        .await?;
    for row in functions {
        let signature: String = row.get(0);
        client
            .batch_execute(&format!("ALTER FUNCTION {signature} OWNER TO {owner}"))
            .await?;
    }
    // The migration history moves into the schema it describes.
    let legacy = Roles::legacy_migration_table(service);
    if relation_exists(client, &legacy).await?
        && !relation_exists(client, &Roles::migration_table(service)).await?
    {
        client
            .batch_execute(&format!(
                "ALTER TABLE public.{t} OWNER TO {owner}; ALTER TABLE public.{t} SET SCHEMA {schema};",
                t = ident(&format!("weft_{service}_migrations"))
            ))
            .await?;
    }
    // The serving role: rows and sequences of its own schema, nothing more,
    // now and for whatever later migrations create.
    client
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {schema} TO {app};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {app};
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {app};
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}
               GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app};
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}
               GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {app};"
        ))
        .await?;
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_database_and_quoted_safely() {
        let r = Roles::of("weft", "inventory");
        assert_eq!(r.owner, "weft_inventory_owner");
        assert_eq!(r.migrator, "weft_inventory_migrate");
        assert_eq!(r.service, "weft_inventory");
        assert_eq!(r.schema, "inventory");
        assert_eq!(
            Roles::migration_table("orders"),
            "orders.weft_orders_migrations"
        );
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
