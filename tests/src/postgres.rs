//! Gives each test a database of its own. The server is, in order of
//! preference: the one `DATABASE_URL` names; one answering on 127.0.0.1:5432;
//! or a throwaway cluster started from the system's `initdb`/`pg_ctl` (as the
//! `postgres` user when running as root) and removed when the test process ends.

use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::NoTls;

/// Where test databases are created: connection settings for the admin
/// database of the chosen server.
static SERVER: OnceLock<std::result::Result<tokio_postgres::Config, String>> = OnceLock::new();

fn server() -> Result<tokio_postgres::Config> {
    SERVER
        .get_or_init(|| choose_server().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no PostgreSQL server for tests: {e}"))
}

fn choose_server() -> Result<tokio_postgres::Config> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url.parse().context("parsing DATABASE_URL");
    }
    let local: SocketAddr = ([127, 0, 0, 1], 5432).into();
    if TcpStream::connect_timeout(&local, Duration::from_millis(500)).is_ok() {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(5432)
            .user("postgres")
            .dbname("postgres");
        return Ok(config);
    }
    start_throwaway_cluster()
}

/// A connection to the chosen server's administrative database (for what
/// belongs to the server rather than one database: roles).
pub async fn admin_connect() -> Result<tokio_postgres::Client> {
    connect(&server()?).await
}

/// A database that exists for one test and is dropped with this value.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    config: tokio_postgres::Config,
    admin: tokio_postgres::Config,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin = server()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "weft_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let client = connect(&admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let mut config = admin.clone();
        config.dbname(&name);
        Ok(Self {
            name,
            config,
            admin,
        })
    }

    /// Connection settings for this database.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `postgres://` URL for this database, for processes configured by URL.
    pub fn url(&self) -> String {
        config_url(&self.config)
    }

    /// A direct connection for assertions on stored state.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        connect(&self.config).await
    }

    /// Commits in this database stop waiting for their WAL to reach disk
    /// (`synchronous_commit = off`, for sessions opened from now on): a
    /// crash may lose the last commits, as on a server with fsync off, but
    /// never corrupts. For benchmarks that set durable commits beside ones
    /// that are not.
    pub async fn commit_without_waiting_for_disk(&self) -> Result<()> {
        let admin = connect(&self.admin).await?;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} SET synchronous_commit = off",
                self.name
            ))
            .await?;
        Ok(())
    }

    /// Refuses new connections and ends the open ones: the database is
    /// "down" for its users until [`TestDb::restore`].
    pub async fn cut_off(&self) -> Result<()> {
        let admin = connect(&self.admin).await?;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
                self.name
            ))
            .await?;
        Ok(())
    }

    /// Lets connections in again after [`TestDb::cut_off`].
    pub async fn restore(&self) -> Result<()> {
        let admin = connect(&self.admin).await?;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                self.name
            ))
            .await?;
        Ok(())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Kept on request, to look at what a failed test left behind.
        if std::env::var_os("WEFT_TEST_KEEP_DB").is_some() {
            eprintln!("kept test database {}", self.name);
            return;
        }
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs outside async context (or inside a runtime that is ending),
        // so the drop gets a small runtime of its own on a plain thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = connect(&admin).await?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test database {}: {e:#}", self.name);
        }
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn config_url(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    match config.get_password() {
        Some(pw) => format!(
            "postgres://{user}:{}@{host}:{port}/{db}",
            String::from_utf8_lossy(pw)
        ),
        None => format!("postgres://{user}@{host}:{port}/{db}"),
    }
}

fn start_throwaway_cluster() -> Result<tokio_postgres::Config> {
    let cluster = weft::postgres::Cluster::start()?;
    cluster.watch_until_exit()?;
    let config = cluster.config("postgres");
    // Kept for the life of the process; the watcher removes it afterwards.
    std::mem::forget(cluster);
    Ok(config)
}
