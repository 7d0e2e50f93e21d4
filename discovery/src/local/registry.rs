//! Registers instances as record files and rewrites them on a heartbeat.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::record;
use crate::error::DiscoveryError;
use crate::traits::Registry;
use crate::types::{Endpoint, Health, Registration};

/// Writes this process's instances into a local registry directory.
#[derive(Debug, Clone)]
pub struct LocalRegistry {
    inner: Arc<Inner>,
}

/// This process's live instances, by (service, id).
type LiveMap = HashMap<(String, String), Live>;

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    ttl: Duration,
    live: Mutex<LiveMap>,
}

#[derive(Debug)]
struct Live {
    endpoint: Arc<Mutex<Endpoint>>,
    heartbeat: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Heartbeats stop; records expire after the TTL as after a crash.
        if let Ok(live) = self.live.lock() {
            for l in live.values() {
                l.heartbeat.abort();
            }
        }
    }
}

impl LocalRegistry {
    /// A registry in `root`; records live `ttl` without a heartbeat.
    pub fn new(root: impl Into<PathBuf>, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: root.into(),
                ttl: ttl.max(Duration::from_millis(30)),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The registry directory.
    pub fn root(&self) -> &std::path::Path {
        &self.inner.root
    }

    fn write(&self, service: &str, endpoint: &Endpoint) -> Result<(), DiscoveryError> {
        record::write_atomic(
            &record::record_path(&self.inner.root, service, &endpoint.id),
            &record::render(endpoint),
        )
    }

    fn live(&self) -> Result<std::sync::MutexGuard<'_, LiveMap>, DiscoveryError> {
        self.inner
            .live
            .lock()
            .map_err(|_| DiscoveryError::Io("registry state poisoned".into()))
    }
}

fn validate(registration: &Registration) -> Result<(), DiscoveryError> {
    record::check_name("service", &registration.service)?;
    record::check_name("instance id", &registration.id)?;
    for (k, v) in &registration.attributes {
        record::check_name("attribute", k)?;
        if v.chars().any(char::is_control) || v.len() > 1024 {
            return Err(DiscoveryError::InvalidRegistration(format!(
                "attribute {k:?}: value must be at most 1024 bytes without control characters"
            )));
        }
    }
    Ok(())
}

impl Registry for LocalRegistry {
    async fn register(&self, registration: &Registration) -> Result<(), DiscoveryError> {
        validate(registration)?;
        let endpoint = Endpoint {
            id: registration.id.clone(),
            addr: registration.addr,
            attributes: registration.attributes.clone(),
            healthy: registration.initially_healthy,
        };
        self.write(&registration.service, &endpoint)?;
        let endpoint = Arc::new(Mutex::new(endpoint));
        let heartbeat = tokio::spawn(heartbeat(
            self.clone_weak(),
            registration.service.clone(),
            endpoint.clone(),
            self.inner.ttl / 3,
        ));
        let key = (registration.service.clone(), registration.id.clone());
        if let Some(old) = self.live()?.insert(
            key,
            Live {
                endpoint,
                heartbeat,
            },
        ) {
            old.heartbeat.abort();
        }
        Ok(())
    }

    async fn set_health(
        &self,
        service: &str,
        id: &str,
        health: Health,
    ) -> Result<(), DiscoveryError> {
        let endpoint = {
            let live = self.live()?;
            let l = live
                .get(&(service.to_owned(), id.to_owned()))
                .ok_or_else(|| DiscoveryError::NotFound {
                    kind: "instance",
                    name: format!("{service}/{id}"),
                })?;
            let mut e = l
                .endpoint
                .lock()
                .map_err(|_| DiscoveryError::Io("registry state poisoned".into()))?;
            e.healthy = health == Health::Healthy;
            e.clone()
        };
        self.write(service, &endpoint)
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        if let Some(l) = self.live()?.remove(&(service.to_owned(), id.to_owned())) {
            l.heartbeat.abort();
        }
        match std::fs::remove_file(record::record_path(&self.inner.root, service, id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl LocalRegistry {
    fn clone_weak(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }
}

/// Rewrites the record every `every`, which refreshes its modification time;
/// stops when the registry is gone.
async fn heartbeat(
    registry: std::sync::Weak<Inner>,
    service: String,
    endpoint: Arc<Mutex<Endpoint>>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let Ok(current) = endpoint.lock().map(|e| e.clone()) else {
            return;
        };
        let path = record::record_path(&inner.root, &service, &current.id);
        if let Err(e) = record::write_atomic(&path, &record::render(&current)) {
            tracing::warn!(error = %e, path = %path.display(), "heartbeat failed");
        }
    }
}
