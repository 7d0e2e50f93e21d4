//! A service's configuration, read from the environment by its binary and
//! built directly by tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use weft_mesh::{DrainConfig, IdentityPaths, IdentitySource, Metrics, Policy};

/// How this instance makes itself known to clients.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The discovery setting (`cloudmap://…`, `local:///…`, `static://…`).
    pub discovery: String,
    /// This instance's id, unique within the service.
    pub instance_id: String,
    /// The address clients should dial; the listener's when unset.
    pub advertise: Option<Advertise>,
    /// Attributes such as `version` and `zone`.
    pub attributes: BTreeMap<String, String>,
}

/// The address an instance registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    /// This address.
    Addr(SocketAddr),
    /// This host's address on the interface that routes to the network
    /// (the task's address on ECS), with the listener's port.
    Auto,
}

/// How the server talks to its callers.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Mutual TLS: callers must present a certificate from the trust bundle;
    /// with a policy, only the identities it allows may call each method.
    Mtls {
        /// Where this service's certificate, key and trust bundle come
        /// from: files, or AWS Private CA.
        identity: IdentitySource,
        /// Who may call what; `None` admits every authenticated caller.
        policy: Option<Policy>,
        /// How often to look for rotated certificates on disk.
        reload_every: Duration,
    },
    /// No TLS and no authentication: for development only.
    Plaintext,
}

/// Everything `run` needs besides the listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// mTLS (the default) or development plaintext.
    pub transport: Transport,
    /// Where the database is.
    pub database: tokio_postgres::Config,
    /// TLS to the database, verified against a CA bundle (`WEFT_DB_CA`);
    /// `None` connects without TLS.
    pub database_tls: Option<crate::pg_tls::PgTls>,
    /// Where migrations connect, when not as the service: the database with
    /// the migrating role's credentials (`WEFT_DB_MIGRATE_USER`,
    /// `WEFT_DB_MIGRATE_PASSWORD`; see [`crate::roles`]).
    pub migrate_database: Option<tokio_postgres::Config>,
    /// Where the pool reads the database password, again whenever the
    /// server refuses it (a rotation): `WEFT_DB_PASSWORD_SECRET`, a Secrets
    /// Manager secret. `None`: the password in `database`, fixed.
    pub database_password: Option<std::sync::Arc<dyn crate::db_password::PasswordSource>>,
    /// Most database connections held at once.
    pub pool_size: usize,
    /// How long a call waits for a database connection before UNAVAILABLE.
    pub db_timeout: Duration,
    /// How long start-up keeps trying to reach the database.
    pub startup_timeout: Duration,
    /// How often health checks the database.
    pub health_interval: Duration,
    /// Most calls in flight per connection.
    pub concurrency_per_connection: usize,
    /// How long idempotency records are kept, the replay window: a retry
    /// with the same key within it gets the first answer
    /// (`WEFT_IDEMPOTENCY_RETENTION_DAYS`, 7).
    pub idempotency_retention: Duration,
    /// HTTP/2 and connection limits (`WEFT_MAX_STREAMS` and the rest; see
    /// [`weft_mesh::ServerLimits`]).
    pub limits: weft_mesh::ServerLimits,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Registration in discovery; `None` serves without registering.
    pub registration: Option<RegistrationConfig>,
    /// The shutdown protocol's timings.
    pub drain: DrainConfig,
    /// Where the Prometheus endpoint listens; `None` for no endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// The registry the server reports into (the process's by default).
    pub metrics: Arc<Metrics>,
    /// Where the metrics endpoint ended up listening (with port 0, say).
    pub metrics_bound: Arc<OnceLock<SocketAddr>>,
    /// Where the process's route table comes from (`WEFT_ROUTES`: a file,
    /// or `ssm:NAME` for a parameter in SSM Parameter Store); `None` for no
    /// routes.
    pub routes: Option<crate::routes::SourceSetting>,
    /// How often the route table is read (`WEFT_ROUTES_POLL_MS`, 5 s).
    pub routes_poll: Duration,
    /// Where the policy lives (`WEFT_POLICY`: a file, or `ssm:NAME` for an
    /// SSM parameter, which must be readable and valid at the start), read
    /// again every `policy_poll` (`WEFT_POLICY_POLL_MS`, 5 s) and applied
    /// when it changes; `None`: the policy loaded at the start stays.
    pub policy_source: Option<crate::routes::SourceSetting>,
    /// See `policy_source`.
    pub policy_poll: Duration,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable has a value that does not parse.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Defaults for everything but the transport and the database.
    pub fn new(transport: Transport, database: tokio_postgres::Config) -> Self {
        Self {
            transport,
            database,
            database_tls: None,
            migrate_database: None,
            database_password: None,
            pool_size: 16,
            db_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(1),
            concurrency_per_connection: 256,
            limits: weft_mesh::ServerLimits::default(),
            idempotency_retention: Duration::from_secs(7 * 86_400),
            max_message_bytes: 4 * 1024 * 1024,
            registration: None,
            drain: DrainConfig::default(),
            metrics_addr: None,
            metrics: Metrics::global(),
            metrics_bound: Arc::new(OnceLock::new()),
            routes: None,
            routes_poll: Duration::from_secs(5),
            policy_source: None,
            policy_poll: Duration::from_secs(5),
        }
    }

    /// Reads `DATABASE_URL` (required); the transport (see
    /// [`transport_from_env`]); the optional `WEFT_DB_POOL_SIZE`,
    /// `WEFT_DB_TIMEOUT_MS`, `WEFT_HEALTH_INTERVAL_MS`, `WEFT_DRAIN_MS` and
    /// `WEFT_GRACE_MS`; and, with `WEFT_DISCOVERY`, the registration of
    /// `service` (`WEFT_INSTANCE_ID`, `WEFT_ADVERTISE`, `WEFT_VERSION`,
    /// `WEFT_ZONE`).
    /// `defaults` gives the metrics address when `WEFT_METRICS_ADDR` is unset.
    pub fn from_env(service: &str, defaults: &Defaults) -> Result<Self, ConfigError> {
        let transport = transport_from_env(service)?;
        let url =
            std::env::var("DATABASE_URL").map_err(|_| ConfigError::Missing("DATABASE_URL"))?;
        let mut database: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| ConfigError::Invalid {
                    name: "DATABASE_URL",
                    reason: e.to_string(),
                })?;
        // The password apart from the URL, as secret stores hand it over
        // (ECS injects it from Secrets Manager, never in plain settings).
        if let Ok(password) = std::env::var("DATABASE_PASSWORD") {
            database.password(password);
        }
        // Migrations as their own role (which owns the schema), the service
        // as one that can only use it.
        let migrate_database = match std::env::var("WEFT_DB_MIGRATE_USER") {
            Ok(user) => {
                let mut migrate = database.clone();
                migrate.user(&user);
                if let Ok(password) = std::env::var("WEFT_DB_MIGRATE_PASSWORD") {
                    migrate.password(password);
                }
                Some(migrate)
            }
            Err(_) => None,
        };
        let mut config = Self::new(transport, database);
        config.migrate_database = migrate_database;
        if std::env::var_os("WEFT_DB_CA").is_some() {
            let require = |c: &mut tokio_postgres::Config| {
                crate::pg_tls::require_tls(c).map_err(|reason| ConfigError::Invalid {
                    name: "DATABASE_URL",
                    reason,
                })
            };
            require(&mut config.database)?;
            if let Some(migrate) = config.migrate_database.as_mut() {
                require(migrate)?;
            }
        }
        if let Ok(secret) = std::env::var("WEFT_DB_PASSWORD_SECRET") {
            config.database_password = Some(std::sync::Arc::new(
                crate::db_password::SecretsManagerPassword::new(secret),
            ));
        }
        if let Ok(ca) = std::env::var("WEFT_DB_CA") {
            config.database_tls =
                Some(crate::pg_tls::PgTls::from_bundle(ca.as_ref()).map_err(|e| {
                    ConfigError::Invalid {
                        name: "WEFT_DB_CA",
                        reason: e.to_string(),
                    }
                })?);
        }
        // Every TLS configuration of the process (mesh, database) follows it.
        if let Ok(kx) = std::env::var("WEFT_TLS_KEY_EXCHANGE") {
            let kx = kx.parse().map_err(|reason| ConfigError::Invalid {
                name: "WEFT_TLS_KEY_EXCHANGE",
                reason,
            })?;
            weft_mesh::provider::set_key_exchange(kx);
        }
        if let Some(n) = env_number("WEFT_DB_POOL_SIZE")? {
            config.pool_size = usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        }
        if let Some(ms) = env_number("WEFT_DB_TIMEOUT_MS")? {
            config.db_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = env_number("WEFT_HEALTH_INTERVAL_MS")? {
            config.health_interval = Duration::from_millis(ms.max(10));
        }
        if let Some(ms) = env_number("WEFT_DRAIN_MS")? {
            config.drain.drain_period = Duration::from_millis(ms);
        }
        if let Some(ms) = env_number("WEFT_GRACE_MS")? {
            config.drain.grace_period = Duration::from_millis(ms);
        }
        if let Some(ms) = env_number("WEFT_DRAIN_NOTIFY_MS")? {
            config.drain.notify_budget = Duration::from_millis(ms);
        }
        config.metrics_addr = metrics_addr_from_env(defaults.metrics)?;
        if let Ok(setting) = std::env::var("WEFT_ROUTES") {
            config.routes = Some(crate::routes::SourceSetting::parse(&setting).map_err(
                |reason| ConfigError::Invalid {
                    name: "WEFT_ROUTES",
                    reason,
                },
            )?);
        }
        if let Some(ms) = env_number("WEFT_ROUTES_POLL_MS")? {
            config.routes_poll = Duration::from_millis(ms.max(100));
        }
        config.policy_source = match std::env::var("WEFT_POLICY") {
            Ok(p) if !p.trim().is_empty() => {
                Some(crate::routes::SourceSetting::parse(&p).map_err(|reason| {
                    ConfigError::Invalid {
                        name: "WEFT_POLICY",
                        reason,
                    }
                })?)
            }
            _ => None,
        };
        if let Some(ms) = env_number("WEFT_POLICY_POLL_MS")? {
            config.policy_poll = Duration::from_millis(ms.max(100));
        }
        if let Some(days) = env_number("WEFT_IDEMPOTENCY_RETENTION_DAYS")? {
            if days == 0 {
                return Err(ConfigError::Invalid {
                    name: "WEFT_IDEMPOTENCY_RETENTION_DAYS",
                    reason: "must be at least 1 (it is the window in which retries are recognised)"
                        .into(),
                });
            }
            config.idempotency_retention = Duration::from_secs(days.saturating_mul(86_400));
        }
        config.limits = weft_mesh::ServerLimits::from_lookup(|name| std::env::var(name).ok())
            .map_err(|e| ConfigError::Invalid {
                name: e.name,
                reason: e.reason,
            })?;
        if let Ok(discovery) = std::env::var("WEFT_DISCOVERY") {
            let advertise = match std::env::var("WEFT_ADVERTISE") {
                Err(_) => None,
                Ok(v) if v == "auto" => Some(Advertise::Auto),
                Ok(v) => Some(Advertise::Addr(v.parse().map_err(
                    |e: std::net::AddrParseError| ConfigError::Invalid {
                        name: "WEFT_ADVERTISE",
                        reason: e.to_string(),
                    },
                )?)),
            };
            // On ECS the task says who and where it is: its task id is the
            // instance id ECS registers in Cloud Map (and never repeats
            // across containers), its zone the one clients prefer.
            let ecs = match std::env::var(crate::ecs::METADATA_VARIABLE) {
                Ok(uri) if !uri.is_empty() => {
                    Some(crate::ecs::task(&uri).map_err(|e| ConfigError::Invalid {
                        name: crate::ecs::METADATA_VARIABLE,
                        reason: e.to_string(),
                    })?)
                }
                _ => None,
            };
            let mut attributes = BTreeMap::new();
            let version =
                std::env::var("WEFT_VERSION").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").into());
            attributes.insert("version".to_owned(), version);
            let zone = std::env::var("WEFT_ZONE")
                .ok()
                .or_else(|| ecs.as_ref().and_then(|t| t.zone.clone()));
            if let Some(zone) = zone {
                attributes.insert("zone".to_owned(), zone);
            }
            // Where its metrics can be read, for tools that judge a
            // version by its own figures (`weft route shift`).
            if let Some(metrics) = config.metrics_addr.filter(|a| a.port() != 0) {
                attributes.insert("metrics_port".to_owned(), metrics.port().to_string());
            }
            config.registration = Some(RegistrationConfig {
                discovery,
                instance_id: std::env::var("WEFT_INSTANCE_ID")
                    .ok()
                    .filter(|id| !id.is_empty())
                    .or_else(|| ecs.map(|t| t.task_id))
                    .unwrap_or_else(|| format!("{service}-{:016x}", random())),
                advertise,
                attributes,
            });
        }
        Ok(config)
    }
}

/// Where a service listens on one machine when the environment does not
/// say: its gRPC address (`WEFT_LISTEN`) and its metrics address
/// (`WEFT_METRICS_ADDR`). Each service names its own, so several run side
/// by side on one machine; a deployment sets both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// The gRPC listener, `host:port`.
    pub listen: &'static str,
    /// The metrics listener, `host:port`.
    pub metrics: &'static str,
}

/// `WEFT_METRICS_ADDR` (`off` for none), else `default`.
pub fn metrics_addr_from_env(default: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let (name, addr) = match std::env::var("WEFT_METRICS_ADDR").as_deref() {
        Ok("off") => return Ok(None),
        Ok(addr) => ("WEFT_METRICS_ADDR", addr.to_owned()),
        Err(_) => ("the default metrics address", default.to_owned()),
    };
    addr.parse()
        .map(Some)
        .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        })
}

/// A random number from the standard library's hasher seed (process ids
/// repeat in containers, where every service is pid 1).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Reads a whole number from the environment, if set.
pub fn env_number(name: &'static str) -> Result<Option<u64>, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                name,
                reason: e.to_string(),
            }),
    }
}

/// mTLS with an identity from AWS Private CA (`WEFT_PCA_ARN` and the
/// variables [`weft_mesh::private_ca::Settings`] reads) or from
/// `WEFT_TLS_CERT`, `WEFT_TLS_KEY`, `WEFT_TLS_CA` (all three, reloaded every
/// `WEFT_TLS_RELOAD_MS`), with an optional `WEFT_POLICY` file; or plaintext
/// when `WEFT_DEV_PLAINTEXT=1` and no TLS variable is set. Anything else is
/// an error: a service never falls back to plaintext silently.
pub fn transport_from_env(service: &str) -> Result<Transport, ConfigError> {
    transport_from(service, |name| std::env::var(name).ok())
}

/// [`transport_from_env`] over any variable lookup.
pub fn transport_from(
    service: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Transport, ConfigError> {
    let var = |name| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let (cert, key, ca) = (
        var("WEFT_TLS_CERT"),
        var("WEFT_TLS_KEY"),
        var("WEFT_TLS_CA"),
    );
    let plaintext = lookup("WEFT_DEV_PLAINTEXT").is_some_and(|v| v == "1" || v == "true");
    let policy_path = var("WEFT_POLICY");
    // Without a policy a service does not start, unless told that every
    // caller of its trust domain may call everything.
    let open = lookup("WEFT_ALLOW_TRUST_DOMAIN").is_some_and(|v| v == "1" || v == "true");
    let policy = || match &policy_path {
        None if !open => Err(ConfigError::Missing(
            "WEFT_POLICY (or WEFT_ALLOW_TRUST_DOMAIN=1 to let every caller of this service's trust domain call everything)",
        )),
        Some(_) if open => Err(ConfigError::Invalid {
            name: "WEFT_ALLOW_TRUST_DOMAIN",
            reason: "set either WEFT_POLICY or WEFT_ALLOW_TRUST_DOMAIN, not both".into(),
        }),
        None => Ok(None),
        // A policy in SSM is read when the server starts (it must be
        // there and valid, or the server does not start); until then
        // nothing is allowed.
        Some(path) if path.to_string_lossy().starts_with("ssm:") => Policy::from_toml("")
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                name: "WEFT_POLICY",
                reason: e.to_string(),
            }),
        Some(path) => Policy::load(path)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                name: "WEFT_POLICY",
                reason: e.to_string(),
            }),
    };
    let private_ca =
        weft_mesh::private_ca::Settings::from_lookup(service, &lookup).map_err(|e| {
            ConfigError::Invalid {
                name: e.name,
                reason: e.reason,
            }
        })?;
    if let Some(settings) = private_ca {
        if cert.is_some() || key.is_some() || ca.is_some() || plaintext {
            return Err(ConfigError::Invalid {
                name: "WEFT_PCA_ARN",
                reason: "set either WEFT_PCA_ARN or the WEFT_TLS_* variables (or WEFT_DEV_PLAINTEXT), not both".into(),
            });
        }
        return Ok(Transport::Mtls {
            identity: IdentitySource::private_ca(settings),
            policy: policy()?,
            reload_every: Duration::from_secs(5),
        });
    }
    match (cert, key, ca, plaintext) {
        (Some(cert), Some(key), Some(trust_bundle), false) => {
            let reload_every = match lookup("WEFT_TLS_RELOAD_MS") {
                None => Duration::from_secs(5),
                Some(v) => Duration::from_millis(v.trim().parse::<u64>().map_err(|e| {
                    ConfigError::Invalid {
                        name: "WEFT_TLS_RELOAD_MS",
                        reason: e.to_string(),
                    }
                })?)
                .max(Duration::from_millis(50)),
            };
            Ok(Transport::Mtls {
                identity: IdentitySource::Files(IdentityPaths {
                    cert,
                    key,
                    trust_bundle,
                }),
                policy: policy()?,
                reload_every,
            })
        }
        (None, None, None, true) if policy_path.is_none() => Ok(Transport::Plaintext),
        (None, None, None, true) => Err(ConfigError::Invalid {
            name: "WEFT_POLICY",
            reason: "a policy needs mTLS; unset WEFT_DEV_PLAINTEXT".into(),
        }),
        (_, _, _, true) => Err(ConfigError::Invalid {
            name: "WEFT_DEV_PLAINTEXT",
            reason: "set either the WEFT_TLS_* variables or WEFT_DEV_PLAINTEXT, not both".into(),
        }),
        _ => Err(ConfigError::Missing(
            "WEFT_TLS_CERT, WEFT_TLS_KEY and WEFT_TLS_CA, or WEFT_PCA_ARN (mTLS is required; make development certificates with `weft certs`, or set WEFT_DEV_PLAINTEXT=1)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn transport(vars: &[(&str, &str)]) -> Result<Transport, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        transport_from("inventory", |name| vars.get(name).cloned())
    }

    #[test]
    fn a_policy_pattern_mistake_stops_the_start_naming_the_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "[[allow]]\nmethods = [\"weft.inventory.v1.InventoryService*\"]\ncallers = [\"*\"]\n",
        )
        .unwrap();
        let err = transport(&[
            ("WEFT_TLS_CERT", "/c"),
            ("WEFT_TLS_KEY", "/k"),
            ("WEFT_TLS_CA", "/ca"),
            ("WEFT_POLICY", path.to_str().unwrap()),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("WEFT_POLICY") && err.contains("weft.inventory.v1.InventoryService*"),
            "{err}"
        );
    }

    #[test]
    fn mtls_is_required_unless_plaintext_is_asked_for() {
        let err = transport(&[]).unwrap_err().to_string();
        assert!(
            err.contains("WEFT_TLS_CERT") && err.contains("WEFT_DEV_PLAINTEXT"),
            "{err}"
        );
        let tls = [
            ("WEFT_TLS_CERT", "/c"),
            ("WEFT_TLS_KEY", "/k"),
            ("WEFT_TLS_CA", "/ca"),
        ];
        // No policy: refused, unless the trust domain is opened explicitly.
        let err = transport(&tls).unwrap_err().to_string();
        assert!(
            err.contains("WEFT_POLICY") && err.contains("WEFT_ALLOW_TRUST_DOMAIN"),
            "{err}"
        );
        let open = [tls[0], tls[1], tls[2], ("WEFT_ALLOW_TRUST_DOMAIN", "1")];
        assert!(matches!(
            transport(&open).unwrap(),
            Transport::Mtls { policy: None, .. }
        ));
        // Two of three is not enough, and never falls back to plaintext.
        assert!(transport(&tls[..2]).is_err());
        assert!(matches!(
            transport(&[("WEFT_DEV_PLAINTEXT", "1")]).unwrap(),
            Transport::Plaintext
        ));
        let both = [tls[0], tls[1], tls[2], ("WEFT_DEV_PLAINTEXT", "1")];
        assert!(
            transport(&both)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        let plain_policy = [("WEFT_DEV_PLAINTEXT", "1"), ("WEFT_POLICY", "/p.toml")];
        assert!(
            transport(&plain_policy)
                .unwrap_err()
                .to_string()
                .contains("needs mTLS")
        );
        let missing_policy = [
            tls[0],
            tls[1],
            tls[2],
            ("WEFT_POLICY", "/nonexistent/policy.toml"),
        ];
        assert!(
            transport(&missing_policy)
                .unwrap_err()
                .to_string()
                .contains("WEFT_POLICY")
        );
    }
}
