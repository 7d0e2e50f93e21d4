//! Turns a resolver's snapshots into the insert/remove events of
//! `tower::discover`, which is what a balancer consumes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use crate::types::{Endpoint, Snapshot};

/// A stream of changes keyed by instance id. An endpoint whose address or
/// attributes change is re-inserted under its id (a balancer replaces it).
#[derive(Debug)]
pub struct Changes {
    snapshots: WatchStream<Snapshot>,
    current: HashMap<String, Endpoint>,
    pending: VecDeque<Change<String, Endpoint>>,
}

impl Changes {
    /// Follows `rx`, starting from its current value.
    pub fn new(rx: watch::Receiver<Snapshot>) -> Self {
        Self {
            snapshots: WatchStream::new(rx),
            current: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    fn diff(&mut self, snapshot: &Snapshot) {
        let next: HashMap<&str, &Endpoint> = snapshot
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), e))
            .collect();
        let mut gone: Vec<String> = self
            .current
            .keys()
            .filter(|id| !next.contains_key(id.as_str()))
            .cloned()
            .collect();
        gone.sort();
        for id in gone {
            self.current.remove(&id);
            self.pending.push_back(Change::Remove(id));
        }
        for endpoint in snapshot.endpoints.iter() {
            if self.current.get(&endpoint.id) != Some(endpoint) {
                self.current.insert(endpoint.id.clone(), endpoint.clone());
                self.pending
                    .push_back(Change::Insert(endpoint.id.clone(), endpoint.clone()));
            }
        }
    }
}

impl Stream for Changes {
    type Item = Result<Change<String, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut self.snapshots).poll_next(cx) {
                Poll::Ready(Some(snapshot)) => self.diff(&snapshot),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn ep(id: &str, port: u16) -> Endpoint {
        Endpoint {
            id: id.into(),
            addr: ([127, 0, 0, 1], port).into(),
            attributes: Default::default(),
            healthy: true,
        }
    }

    fn snap(eps: Vec<Endpoint>) -> Snapshot {
        Snapshot {
            endpoints: eps.into(),
            ..Default::default()
        }
    }

    async fn next(c: &mut Changes) -> Change<String, Endpoint> {
        poll_fn(|cx| Pin::new(&mut *c).poll_next(cx))
            .await
            .unwrap()
            .unwrap()
    }

    fn describe(c: &Change<String, Endpoint>) -> String {
        match c {
            Change::Insert(id, e) => format!("+{id}:{}", e.addr.port()),
            Change::Remove(id) => format!("-{id}"),
        }
    }

    #[tokio::test]
    async fn snapshots_become_inserts_and_removes() {
        let (tx, rx) = watch::channel(snap(vec![ep("a", 1), ep("b", 2)]));
        let mut changes = Changes::new(rx);
        let first = [
            describe(&next(&mut changes).await),
            describe(&next(&mut changes).await),
        ];
        assert_eq!(first, ["+a:1", "+b:2"]);
        tx.send(snap(vec![ep("b", 3), ep("c", 4)])).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(describe(&next(&mut changes).await));
        }
        assert_eq!(got, ["-a", "+b:3", "+c:4"]);
        drop(tx);
        assert!(
            poll_fn(|cx| Pin::new(&mut changes).poll_next(cx))
                .await
                .is_none()
        );
    }
}
