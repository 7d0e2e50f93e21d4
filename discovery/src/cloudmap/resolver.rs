//! Cloud Map watches: one poller per service and filter in the process,
//! shared by every watcher, stopped when the last watcher goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::api::DiscoverApi;
use super::poller::{PollConfig, poll};
use crate::error::DiscoveryError;
use crate::traits::Resolver;
use crate::types::{Filter, Snapshot};

/// Resolves services in one Cloud Map namespace through `A`.
#[derive(Debug)]
pub struct CloudMapResolver<A> {
    api: Arc<A>,
    config: PollConfig,
    pollers: Mutex<HashMap<(String, Filter), watch::Sender<Snapshot>>>,
}

impl<A: DiscoverApi> CloudMapResolver<A> {
    /// A resolver over `api` with `config` timing.
    pub fn new(api: Arc<A>, config: PollConfig) -> Self {
        Self {
            api,
            config,
            pollers: Mutex::new(HashMap::new()),
        }
    }

    /// How many pollers run now.
    pub fn active_pollers(&self) -> usize {
        self.pollers
            .lock()
            .map(|p| p.values().filter(|tx| !tx.is_closed()).count())
            .unwrap_or(0)
    }
}

impl<A: DiscoverApi> Resolver for CloudMapResolver<A> {
    fn watch(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<watch::Receiver<Snapshot>, DiscoveryError> {
        if service.is_empty() {
            return Err(DiscoveryError::InvalidSetting {
                setting: String::new(),
                reason: "empty service name".into(),
            });
        }
        let mut pollers = self
            .pollers
            .lock()
            .map_err(|_| DiscoveryError::Backend("resolver state poisoned".into()))?;
        pollers.retain(|_, tx| !tx.is_closed());
        let key = (service.to_owned(), filter.clone());
        if let Some(tx) = pollers.get(&key) {
            return Ok(tx.subscribe());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| DiscoveryError::Backend("watch needs a tokio runtime".into()))?;
        let (tx, rx) = watch::channel(Snapshot::default());
        runtime.spawn(poll(
            self.api.clone(),
            service.to_owned(),
            filter.clone(),
            self.config.clone(),
            tx.clone(),
        ));
        pollers.insert(key, tx);
        Ok(rx)
    }
}
