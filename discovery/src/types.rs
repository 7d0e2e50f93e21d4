//! The values discovery deals in: what an instance registers, what a resolver
//! yields, and how a client narrows the endpoints of a service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The attribute that carries an instance's version (a hard filter).
pub const VERSION_ATTRIBUTE: &str = "version";
/// The attribute that carries an instance's zone (a soft filter).
pub const ZONE_ATTRIBUTE: &str = "zone";

/// An instance as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The service it belongs to, for example `inventory`.
    pub service: String,
    /// Unique within the service, for example a task id.
    pub id: String,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Free-form attributes, such as `version` and `zone`.
    pub attributes: BTreeMap<String, String>,
    /// Whether it is served to clients from the start. Instances that are not
    /// ready yet register unhealthy and report health once they are.
    pub initially_healthy: bool,
}

impl Registration {
    /// A registration with no attributes that is healthy at once.
    pub fn new(service: impl Into<String>, id: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            service: service.into(),
            id: id.into(),
            addr,
            attributes: BTreeMap::new(),
            initially_healthy: true,
        }
    }

    /// Adds an attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }
}

/// Health as an instance reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Ready for calls.
    Healthy,
    /// Not ready (starting, draining, or its dependencies are down).
    Unhealthy,
}

/// One instance of a service as a resolver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The instance id.
    pub id: String,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// Whether the backend reports it healthy.
    pub healthy: bool,
}

/// Narrows the endpoints of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter {
    /// Attributes an endpoint must have (for example a version).
    pub required: BTreeMap<String, String>,
    /// Attributes preferred when some endpoints have them (for example a zone);
    /// when none do, they are ignored.
    pub preferred: BTreeMap<String, String>,
}

impl Filter {
    /// No filter: every endpoint.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only endpoints whose `key` is `value`.
    pub fn require(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.required.insert(key.into(), value.into());
        self
    }

    /// Endpoints whose `key` is `value` when there are any.
    pub fn prefer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.preferred.insert(key.into(), value.into());
        self
    }
}

/// What a resolver knows of a service at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The endpoints to call, sorted by id.
    pub endpoints: Arc<[Endpoint]>,
    /// When the backend last answered; `None` until it first has.
    pub fetched_at: Option<Instant>,
    /// The last error, if the latest attempt failed; the endpoints are then
    /// the last known good ones.
    pub last_error: Option<Arc<str>>,
}

impl Snapshot {
    /// How long ago the endpoints were confirmed by the backend.
    pub fn staleness(&self) -> Option<Duration> {
        self.fetched_at.map(|at| at.elapsed())
    }

    /// Whether the backend has answered at least once.
    pub fn is_ready(&self) -> bool {
        self.fetched_at.is_some()
    }
}

/// Applies a filter and the Cloud Map health rule `HEALTHY_OR_ELSE_ALL` to a
/// service's instances, as the local and static backends must do themselves:
/// required attributes always; then healthy endpoints when there are any,
/// else all (a service whose health reports are all failing is better called
/// than declared empty); then preferred attributes when any endpoint left has
/// them.
pub fn select(mut all: Vec<Endpoint>, filter: &Filter) -> Vec<Endpoint> {
    let has = |e: &Endpoint, attrs: &BTreeMap<String, String>| {
        attrs.iter().all(|(k, v)| e.attributes.get(k) == Some(v))
    };
    all.retain(|e| has(e, &filter.required));
    // Health before preference: a healthy endpoint in another zone beats an
    // unhealthy one in ours.
    if all.iter().any(|e| e.healthy) {
        all.retain(|e| e.healthy);
    }
    if !filter.preferred.is_empty() && all.iter().any(|e| has(e, &filter.preferred)) {
        all.retain(|e| has(e, &filter.preferred));
    }
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, version: &str, zone: &str, healthy: bool) -> Endpoint {
        Endpoint {
            id: id.into(),
            addr: ([127, 0, 0, 1], 1).into(),
            attributes: [("version", version), ("zone", zone)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            healthy,
        }
    }

    fn ids(v: Vec<Endpoint>) -> Vec<String> {
        v.into_iter().map(|e| e.id).collect()
    }

    #[test]
    fn required_attributes_are_hard_and_preferred_ones_soft() {
        let all = vec![
            ep("a", "1", "z1", true),
            ep("b", "2", "z1", true),
            ep("c", "1", "z2", true),
        ];
        let v1 = Filter::any().require("version", "1");
        assert_eq!(ids(select(all.clone(), &v1)), ["a", "c"]);
        assert_eq!(
            ids(select(all.clone(), &v1.clone().prefer("zone", "z2"))),
            ["c"]
        );
        // No endpoint in z9: the preference is ignored.
        assert_eq!(
            ids(select(all.clone(), &v1.prefer("zone", "z9"))),
            ["a", "c"]
        );
        assert!(select(all, &Filter::any().require("version", "3")).is_empty());
    }

    #[test]
    fn healthy_or_else_all() {
        let all = vec![ep("a", "1", "z", false), ep("b", "1", "z", true)];
        assert_eq!(ids(select(all.clone(), &Filter::any())), ["b"]);
        let none_healthy = vec![ep("a", "1", "z", false), ep("b", "1", "z", false)];
        assert_eq!(ids(select(none_healthy, &Filter::any())), ["a", "b"]);
        // Health wins over zone preference.
        let mixed = vec![ep("a", "1", "near", false), ep("b", "1", "far", true)];
        assert_eq!(
            ids(select(mixed, &Filter::any().prefer("zone", "near"))),
            ["b"]
        );
    }
}
