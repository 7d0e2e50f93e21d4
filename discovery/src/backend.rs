//! Chooses a discovery backend from one setting, for example
//! `cloudmap://weft.internal`, `local:///var/run/weft` or
//! `static://inventory=127.0.0.1:7001`, and dispatches to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::cloudmap::{ClientOptions, CloudMap, PollConfig, RegistrationMode};
use crate::error::DiscoveryError;
use crate::local::{DEFAULT_POLL, DEFAULT_TTL, LocalRegistry, LocalResolver};
use crate::static_backend::StaticDiscovery;
use crate::traits::{Registry, Resolver};
use crate::types::{Filter, Health, Registration, Snapshot};

/// A parsed discovery setting, before connecting.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// `cloudmap://NAMESPACE[?registration=external&revision_ms=N&refresh_ms=N]`
    CloudMap {
        /// The HTTP namespace's name.
        namespace: String,
        /// Who registers instances.
        external_registration: bool,
        /// Revision check period.
        revision_period: Duration,
        /// Full refresh period.
        refresh_period: Duration,
    },
    /// `local:///PATH[?ttl_ms=N&poll_ms=N]`
    Local {
        /// The registry directory.
        root: PathBuf,
        /// Record lifetime without a heartbeat.
        ttl: Duration,
        /// How often watchers look.
        poll: Duration,
    },
    /// `static://svc=host:port,...;svc2=...`
    Static(String),
}

impl Setting {
    /// Parses a setting; anything unknown is a clear error.
    pub fn parse(setting: &str) -> Result<Self, DiscoveryError> {
        let invalid = |reason: &str| DiscoveryError::InvalidSetting {
            setting: setting.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = setting.split_once("://").ok_or_else(|| {
            invalid(
                "expected cloudmap://NAMESPACE, local:///PATH or static://SERVICE=HOST:PORT,...",
            )
        })?;
        if scheme == "static" {
            StaticDiscovery::parse(rest)?;
            return Ok(Self::Static(rest.to_owned()));
        }
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params: HashMap<&str, &str> = HashMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid("query parameters are key=value"))?;
            params.insert(k, v);
        }
        let mut millis = |key: &str, default: Duration| -> Result<Duration, DiscoveryError> {
            match params.remove(key) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| invalid(&format!("{key} must be a whole number of milliseconds"))),
            }
        };
        let parsed = match scheme {
            "cloudmap" => {
                if target.is_empty() || target.contains('/') {
                    return Err(invalid(
                        "cloudmap:// needs a namespace name, like cloudmap://weft.internal",
                    ));
                }
                let defaults = PollConfig::default();
                let revision_period = millis("revision_ms", defaults.revision_period)?;
                let refresh_period = millis("refresh_ms", defaults.full_refresh_period)?;
                let external_registration = match params.remove("registration") {
                    None | Some("self") => false,
                    Some("external") => true,
                    Some(_) => return Err(invalid("registration must be self or external")),
                };
                Self::CloudMap {
                    namespace: target.to_owned(),
                    external_registration,
                    revision_period,
                    refresh_period,
                }
            }
            "local" => {
                if !target.starts_with('/') {
                    return Err(invalid(
                        "local:// needs an absolute path, like local:///var/run/weft",
                    ));
                }
                Self::Local {
                    root: PathBuf::from(target),
                    ttl: millis("ttl_ms", DEFAULT_TTL)?,
                    poll: millis("poll_ms", DEFAULT_POLL)?,
                }
            }
            _ => {
                return Err(invalid(&format!(
                    "unknown backend {scheme:?}; use cloudmap, local or static"
                )));
            }
        };
        if let Some(key) = params.keys().next() {
            return Err(invalid(&format!("unknown parameter {key:?}")));
        }
        Ok(parsed)
    }
}

/// A connected discovery backend: both a [`Registry`] and a [`Resolver`].
#[derive(Debug, Clone)]
pub enum Discovery {
    /// AWS Cloud Map.
    CloudMap(CloudMap),
    /// A local directory.
    Local(LocalRegistry, LocalResolver),
    /// Fixed endpoints.
    Static(StaticDiscovery),
}

impl Discovery {
    /// Parses `setting` and connects to the backend it names.
    pub async fn from_setting(setting: &str) -> Result<Self, DiscoveryError> {
        Self::connect(Setting::parse(setting)?, &ClientOptions::default()).await
    }

    /// The services the backend knows, sorted (Cloud Map: the namespace's;
    /// local: those with a directory; static: those configured): for
    /// operators' listings.
    pub async fn services(&self) -> Result<Vec<String>, DiscoveryError> {
        match self {
            Self::CloudMap(c) => c.registry().service_names().await,
            Self::Local(_, resolver) => resolver.services(),
            Self::Static(s) => Ok(s.services()),
        }
    }

    /// Whether the platform registers instances, leaving them only their
    /// health to report.
    pub fn registers_externally(&self) -> bool {
        matches!(self, Self::CloudMap(c) if c.registers_externally())
    }

    /// Connects to a parsed setting; `aws` overrides the AWS configuration
    /// chain (tests point it at an emulator).
    pub async fn connect(setting: Setting, aws: &ClientOptions) -> Result<Self, DiscoveryError> {
        Ok(match setting {
            Setting::CloudMap {
                namespace,
                external_registration,
                revision_period,
                refresh_period,
            } => {
                let mode = if external_registration {
                    RegistrationMode::External
                } else {
                    RegistrationMode::SelfRegister
                };
                let poll = PollConfig {
                    revision_period,
                    full_refresh_period: refresh_period,
                    ..PollConfig::default()
                };
                Self::CloudMap(CloudMap::connect(&namespace, aws, mode, poll).await?)
            }
            Setting::Local { root, ttl, poll } => Self::Local(
                LocalRegistry::new(root.clone(), ttl),
                LocalResolver::new(root, ttl, poll),
            ),
            Setting::Static(spec) => Self::Static(StaticDiscovery::parse(&spec)?),
        })
    }
}

impl Registry for Discovery {
    async fn register(&self, registration: &Registration) -> Result<(), DiscoveryError> {
        match self {
            Self::CloudMap(c) => c.register(registration).await,
            Self::Local(r, _) => r.register(registration).await,
            Self::Static(s) => s.register(registration).await,
        }
    }

    async fn set_health(
        &self,
        service: &str,
        id: &str,
        health: Health,
    ) -> Result<(), DiscoveryError> {
        match self {
            Self::CloudMap(c) => c.set_health(service, id, health).await,
            Self::Local(r, _) => r.set_health(service, id, health).await,
            Self::Static(s) => s.set_health(service, id, health).await,
        }
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        match self {
            Self::CloudMap(c) => c.deregister(service, id).await,
            Self::Local(r, _) => r.deregister(service, id).await,
            Self::Static(s) => s.deregister(service, id).await,
        }
    }
}

impl Resolver for Discovery {
    fn watch(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<watch::Receiver<Snapshot>, DiscoveryError> {
        match self {
            Self::CloudMap(c) => c.watch(service, filter),
            Self::Local(_, r) => r.watch(service, filter),
            Self::Static(s) => s.watch(service, filter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_or_explain() {
        assert_eq!(
            Setting::parse("cloudmap://weft.internal?registration=external&revision_ms=1000")
                .unwrap(),
            Setting::CloudMap {
                namespace: "weft.internal".into(),
                external_registration: true,
                revision_period: Duration::from_secs(1),
                refresh_period: Duration::from_secs(30),
            }
        );
        assert_eq!(
            Setting::parse("local:///tmp/weft?ttl_ms=500").unwrap(),
            Setting::Local {
                root: "/tmp/weft".into(),
                ttl: Duration::from_millis(500),
                poll: DEFAULT_POLL,
            }
        );
        assert!(matches!(
            Setting::parse("static://a=127.0.0.1:1").unwrap(),
            Setting::Static(_)
        ));
        for (bad, says) in [
            ("consul://x", "unknown backend"),
            ("weft.internal", "expected"),
            ("cloudmap://", "namespace"),
            ("local://relative", "absolute"),
            ("local:///x?ttl_ms=soon", "ttl_ms"),
            ("local:///x?colour=red", "unknown parameter"),
            ("cloudmap://ns?registration=maybe", "registration"),
            ("static://a=nowhere", "host:port"),
        ] {
            let err = Setting::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
