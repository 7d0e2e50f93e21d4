//! Watches a local registry directory and publishes the live instances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::record;
use crate::error::DiscoveryError;
use crate::traits::Resolver;
use crate::types::{Endpoint, Filter, Snapshot, select};

/// Resolves services from a local registry directory.
#[derive(Debug, Clone)]
pub struct LocalResolver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    ttl: Duration,
    poll: Duration,
    watchers: Mutex<HashMap<(String, Filter), watch::Sender<Snapshot>>>,
}

impl LocalResolver {
    /// Resolves from `root`, serving records younger than `ttl`, looking
    /// every `poll`.
    pub fn new(root: impl Into<PathBuf>, ttl: Duration, poll: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: root.into(),
                ttl,
                poll: poll.max(Duration::from_millis(10)),
                watchers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Reads every instance of `service` once, live or not, unfiltered: for
    /// operators' listings.
    pub fn read_all(&self, service: &str) -> Result<Vec<(Endpoint, bool)>, DiscoveryError> {
        read_service(&self.inner.root, service, self.inner.ttl)
    }

    /// The services that have a directory in the registry.
    pub fn services(&self) -> Result<Vec<String>, DiscoveryError> {
        let mut names = Vec::new();
        match std::fs::read_dir(&self.inner.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
            Ok(entries) => {
                for entry in entries.flatten() {
                    if entry.path().is_dir()
                        && let Some(name) = entry.file_name().to_str()
                    {
                        names.push(name.to_owned());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

impl Resolver for LocalResolver {
    fn watch(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<watch::Receiver<Snapshot>, DiscoveryError> {
        record::check_name("service", service)?;
        let mut watchers = self
            .inner
            .watchers
            .lock()
            .map_err(|_| DiscoveryError::Io("resolver state poisoned".into()))?;
        let key = (service.to_owned(), filter.clone());
        if let Some(tx) = watchers.get(&key)
            && !tx.is_closed()
        {
            return Ok(tx.subscribe());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| DiscoveryError::Backend("watch needs a tokio runtime".into()))?;
        let (tx, rx) = watch::channel(Snapshot::default());
        runtime.spawn(poll(
            self.inner.root.clone(),
            service.to_owned(),
            filter.clone(),
            self.inner.ttl,
            self.inner.poll,
            tx.clone(),
        ));
        watchers.insert(key, tx);
        Ok(rx)
    }
}

/// Reads a service's records: each endpoint and whether it is live.
fn read_service(
    root: &Path,
    service: &str,
    ttl: Duration,
) -> Result<Vec<(Endpoint, bool)>, DiscoveryError> {
    let dir = record::service_dir(root, service);
    let entries = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other?,
    };
    let now = SystemTime::now();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !record::is_record(&path) {
            continue;
        }
        let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        // A record removed between listing and reading is simply gone.
        let (Ok(meta), Ok(text)) = (std::fs::metadata(&path), std::fs::read_to_string(&path))
        else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        match record::parse(id, &text) {
            Ok(endpoint) => out.push((endpoint, age <= ttl)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping bad record"),
        }
        // Long-dead records are swept so the directory does not grow forever.
        if age > ttl * 20 {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(out)
}

async fn poll(
    root: PathBuf,
    service: String,
    filter: Filter,
    ttl: Duration,
    every: Duration,
    tx: watch::Sender<Snapshot>,
) {
    loop {
        let read = {
            let (root, service) = (root.clone(), service.clone());
            tokio::task::spawn_blocking(move || read_service(&root, &service, ttl)).await
        };
        let read = read.unwrap_or_else(|e| Err(DiscoveryError::Io(e.to_string())));
        tx.send_if_modified(|snapshot| match read {
            Ok(records) => {
                let live = records
                    .into_iter()
                    .filter(|(_, live)| *live)
                    .map(|(e, _)| e)
                    .collect();
                let endpoints = select(live, &filter);
                let changed = *snapshot.endpoints != *endpoints
                    || snapshot.last_error.is_some()
                    || snapshot.fetched_at.is_none();
                snapshot.fetched_at = Some(Instant::now());
                snapshot.last_error = None;
                if changed {
                    snapshot.endpoints = endpoints.into();
                }
                changed
            }
            Err(e) => {
                tracing::warn!(%service, error = %e, "reading the local registry failed");
                snapshot.last_error = Some(e.to_string().into());
                true
            }
        });
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
