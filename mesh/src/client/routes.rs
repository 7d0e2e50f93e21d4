//! Route tables: for each upstream service, which endpoints a call goes to
//! (a header match first, then a weighted split across subsets of endpoints
//! chosen by their discovery attributes) and each method's timeout and
//! retries. Pure: parsed from TOML, refusing unknown keys and naming the
//! place of any error, and asked per call. Where a table comes from and how
//! it is kept current is [`super::route_source`].
//!
//! ```toml
//! [services.inventory]
//! # A test-traffic header sends a caller's calls to the new version.
//! match = [{ header = "x-weft-route", value = "canary", subset = { version = "1.5" } }]
//! # Every other call: 95 in 100 to 1.4, 5 to 1.5.
//! split = [
//!   { subset = { version = "1.4" }, weight = 95 },
//!   { subset = { version = "1.5" }, weight = 5 },
//! ]
//! # Timeouts and retries by method (exact, or a `Service/*` prefix), and
//! # for every other method.
//! method = [
//!   { name = "weft.inventory.v1.InventoryService/GetStock", timeout = "300ms", attempts = 3, retry_on = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"] },
//! ]
//! default = { timeout = "2s" }
//! ```
//!
//! A service the table does not name, or a call no rule places, goes to
//! every endpoint, with the client's own settings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tonic::Code;
use tonic::codegen::http::HeaderMap;

use super::timeouts::parse_duration;

/// The most attempts a route may ask for (the first included).
pub const MAX_ATTEMPTS: u32 = 5;
/// The most rules of each kind one service may have: a table is read on
/// every call, and a longer one is a mistake.
const MAX_RULES: usize = 64;
/// The most a weight may be.
const MAX_WEIGHT: u32 = 1_000_000;

/// Why a route table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutesError {
    /// The TOML does not parse or has unknown keys.
    #[error("routes do not parse: {0}")]
    Parse(String),
    /// A rule is wrong.
    #[error("services.{service}.{place}: {reason}")]
    Rule {
        /// The service.
        service: String,
        /// The rule (`split[2]`, `method[1]`, `default`).
        place: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    services: BTreeMap<String, ServiceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    #[serde(default, rename = "match")]
    matches: Vec<MatchFile>,
    #[serde(default)]
    split: Vec<SplitFile>,
    #[serde(default)]
    method: Vec<MethodFile>,
    default: Option<PolicyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    header: String,
    value: String,
    subset: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitFile {
    subset: BTreeMap<String, String>,
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodFile {
    name: String,
    #[serde(flatten)]
    policy: PolicyFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    timeout: Option<String>,
    attempts: Option<u32>,
    retry_on: Option<Vec<String>>,
}

/// Endpoints chosen by attributes: those whose discovery attributes include
/// every one of these.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subset(BTreeMap<String, String>);

impl Subset {
    /// A subset of endpoints with all of `attributes`.
    pub fn new(attributes: BTreeMap<String, String>) -> Self {
        Self(attributes)
    }

    /// Whether an endpoint with `attributes` is in it.
    pub fn contains(&self, attributes: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(k, v)| attributes.get(k).is_some_and(|a| a == v))
    }

    /// Its attributes.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
            first = false;
        }
        Ok(())
    }
}

/// Where a route places a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The endpoints it goes to.
    pub subset: &'a Subset,
    /// Only those (a header match: test traffic must reach the version it
    /// names or fail); else, with none of them available, any endpoint (a
    /// split: a canary's share of calls is not failed for want of it).
    pub strict: bool,
}

/// A method's timeout and retries, where a route sets them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodPolicy {
    /// The call's timeout when it carries no deadline of its own.
    pub timeout: Option<Duration>,
    /// Most attempts, the first included.
    pub attempts: Option<u32>,
    /// The codes that may be retried, for methods safe to repeat.
    pub retry_on: Option<Arc<[Code]>>,
}

impl MethodPolicy {
    /// This policy, with what it leaves unset taken from `fallback`.
    fn or(&self, fallback: &MethodPolicy) -> MethodPolicy {
        MethodPolicy {
            timeout: self.timeout.or(fallback.timeout),
            attempts: self.attempts.or(fallback.attempts),
            retry_on: self.retry_on.clone().or_else(|| fallback.retry_on.clone()),
        }
    }
}

/// One service's routes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceRoutes {
    /// (header, value, subset): the first whose header the call carries
    /// with that value places it.
    matches: Vec<(String, String, Subset)>,
    /// (subset, weight), in the table's order.
    split: Vec<(Subset, u32)>,
    /// The weights' sum.
    total: u64,
    /// Exact methods before prefixes, longest prefix first.
    methods: Vec<(String, bool, MethodPolicy)>,
    default: MethodPolicy,
}

impl ServiceRoutes {
    /// Where a call with `headers` goes: the subset of the first header
    /// match, else the subset the split draws with `roll` (uniform in
    /// `0..1`), else anywhere (`None`).
    pub fn subset_for(&self, headers: &HeaderMap, roll: f64) -> Option<&Subset> {
        self.placement(headers, roll).map(|p| p.subset)
    }

    /// [`ServiceRoutes::subset_for`], saying whether the subset is strict.
    pub fn placement(&self, headers: &HeaderMap, roll: f64) -> Option<Placement<'_>> {
        for (header, value, subset) in &self.matches {
            if headers
                .get(header.as_str())
                .is_some_and(|v| v.as_bytes() == value.as_bytes())
            {
                return Some(Placement {
                    subset,
                    strict: true,
                });
            }
        }
        let subset = self.split_draw(roll)?;
        Some(Placement {
            subset,
            strict: false,
        })
    }

    fn split_draw(&self, roll: f64) -> Option<&Subset> {
        if self.total == 0 {
            return None;
        }
        let mut point = (roll.clamp(0.0, 1.0) * self.total as f64) as u64;
        for (subset, weight) in &self.split {
            let weight = u64::from(*weight);
            if point < weight {
                return Some(subset);
            }
            point -= weight;
        }
        self.split.last().map(|(s, _)| s)
    }

    /// The timeout and retries of `path` (`/package.Service/Method`).
    pub fn policy_for(&self, path: &str) -> MethodPolicy {
        let method = path.trim_start_matches('/');
        self.methods
            .iter()
            .find(|(name, prefix, _)| {
                if *prefix {
                    method.starts_with(name.as_str())
                } else {
                    method == name
                }
            })
            .map(|(_, _, p)| p.or(&self.default))
            .unwrap_or_else(|| self.default.clone())
    }

    /// The split: each subset and its weight.
    pub fn split(&self) -> &[(Subset, u32)] {
        &self.split
    }
}

/// Every service's routes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTable {
    services: HashMap<String, Arc<ServiceRoutes>>,
}

impl RouteTable {
    /// Parses a table from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, RoutesError> {
        let file: TableFile =
            toml::from_str(text).map_err(|e| RoutesError::Parse(e.to_string()))?;
        let mut services = HashMap::new();
        for (name, service) in file.services {
            let routes = parse_service(&name, service)?;
            services.insert(name, Arc::new(routes));
        }
        Ok(Self { services })
    }

    /// The routes of `service`, if the table names it.
    pub fn service(&self, service: &str) -> Option<&Arc<ServiceRoutes>> {
        self.services.get(service)
    }

    /// The services it names, sorted.
    pub fn services(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.services.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

fn parse_service(name: &str, file: ServiceFile) -> Result<ServiceRoutes, RoutesError> {
    let err = |place: String, reason: String| RoutesError::Rule {
        service: name.to_owned(),
        place,
        reason,
    };
    if !is_service_name(name) {
        return Err(err(String::new(), "is not a service name".into()));
    }
    for (kind, n) in [
        ("match", file.matches.len()),
        ("split", file.split.len()),
        ("method", file.method.len()),
    ] {
        if n > MAX_RULES {
            return Err(err(kind.into(), format!("at most {MAX_RULES} rules")));
        }
    }
    let subset = |place: &str, attributes: BTreeMap<String, String>| {
        if attributes.is_empty() {
            return Err(err(
                place.into(),
                "a subset names at least one attribute".into(),
            ));
        }
        Ok(Subset(attributes))
    };
    let mut matches = Vec::new();
    for (i, m) in file.matches.into_iter().enumerate() {
        let place = format!("match[{i}]");
        let header = m.header.to_ascii_lowercase();
        if tonic::codegen::http::HeaderName::from_bytes(header.as_bytes()).is_err()
            || header.starts_with("grpc-")
            || header.starts_with(':')
        {
            return Err(err(
                place,
                format!("{:?} is not a header a call may carry", m.header),
            ));
        }
        if tonic::codegen::http::HeaderValue::from_str(&m.value).is_err() {
            return Err(err(place, "the value is not a header value".into()));
        }
        matches.push((header, m.value, subset(&place, m.subset)?));
    }
    let mut split = Vec::new();
    let mut total = 0u64;
    for (i, s) in file.split.into_iter().enumerate() {
        let place = format!("split[{i}]");
        if s.weight > MAX_WEIGHT {
            return Err(err(place, format!("a weight is at most {MAX_WEIGHT}")));
        }
        total += u64::from(s.weight);
        split.push((subset(&place, s.subset)?, s.weight));
    }
    if !split.is_empty() && total == 0 {
        return Err(err("split".into(), "the weights add up to zero".into()));
    }
    let mut methods = Vec::new();
    for (i, m) in file.method.into_iter().enumerate() {
        let place = format!("method[{i}]");
        let name = m.name.trim_start_matches('/');
        let (name, prefix) = match name.strip_suffix('*') {
            Some(p) if p.ends_with('/') || p.ends_with('.') => (p.to_owned(), true),
            Some(_) => {
                return Err(err(place, "a '*' ends a name at a '/' or '.'".into()));
            }
            None if name.contains('/') && !name.ends_with('/') => (name.to_owned(), false),
            None => {
                return Err(err(
                    place,
                    "methods look like package.Service/Method".into(),
                ));
            }
        };
        methods.push((name, prefix, policy(m.policy).map_err(|e| err(place, e))?));
    }
    // Exact names first, then the longest prefix.
    methods.sort_by_key(|(name, prefix, _)| (*prefix, std::cmp::Reverse(name.len())));
    let default = match file.default {
        Some(p) => policy(p).map_err(|e| err("default".into(), e))?,
        None => MethodPolicy::default(),
    };
    Ok(ServiceRoutes {
        matches,
        split,
        total,
        methods,
        default,
    })
}

/// A discovery service name: 1 to 63 lowercase letters, digits and
/// hyphens, starting with a letter.
fn is_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn policy(file: PolicyFile) -> Result<MethodPolicy, String> {
    let timeout = match file.timeout {
        Some(t) => match parse_duration(&t) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                return Err(format!(
                    "timeout {t:?}: durations look like 250ms, 2s or 1m"
                ));
            }
        },
        None => None,
    };
    if let Some(n) = file.attempts
        && !(1..=MAX_ATTEMPTS).contains(&n)
    {
        return Err(format!("attempts {n}: from 1 to {MAX_ATTEMPTS}"));
    }
    let retry_on = match file.retry_on {
        Some(names) => Some(
            names
                .iter()
                .map(|n| {
                    code_named(n).ok_or_else(|| {
                        format!("retry_on: {n:?} is not a status code that may be retried")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
                .into(),
        ),
        None => None,
    };
    Ok(MethodPolicy {
        timeout,
        attempts: file.attempts,
        retry_on,
    })
}

/// The codes a route may make retryable: those that can mean "try again"
/// (the others say the request itself is wrong, or it succeeded).
fn code_named(name: &str) -> Option<Code> {
    Some(match name {
        "UNAVAILABLE" => Code::Unavailable,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "ABORTED" => Code::Aborted,
        "INTERNAL" => Code::Internal,
        "UNKNOWN" => Code::Unknown,
        "CANCELLED" => Code::Cancelled,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    const TABLE: &str = r#"
        [services.inventory]
        match = [{ header = "X-Weft-Route", value = "canary", subset = { version = "1.5" } }]
        split = [
          { subset = { version = "1.4" }, weight = 95 },
          { subset = { version = "1.5" }, weight = 5 },
        ]
        method = [
          { name = "weft.inventory.v1.InventoryService/GetStock", timeout = "300ms", attempts = 3, retry_on = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"] },
          { name = "weft.inventory.v1.InventoryService/*", attempts = 1 },
        ]
        default = { timeout = "2s" }
    "#;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn a_header_match_places_a_call_before_the_split() {
        let table = RouteTable::from_toml(TABLE).unwrap();
        let routes = table.service("inventory").unwrap();
        let mut headers = HeaderMap::new();
        let new = Subset(attrs(&[("version", "1.5")]));
        headers.insert("x-weft-route", HeaderValue::from_static("canary"));
        for roll in [0.0, 0.5, 0.99] {
            assert_eq!(routes.subset_for(&headers, roll), Some(&new));
        }
        headers.insert("x-weft-route", HeaderValue::from_static("other"));
        assert_eq!(
            routes.subset_for(&headers, 0.1).map(ToString::to_string),
            Some("version=1.4".into())
        );
        assert!(table.service("payments").is_none());
    }

    #[test]
    fn a_header_match_is_strict_and_a_split_is_not() {
        let table = RouteTable::from_toml(TABLE).unwrap();
        let routes = table.service("inventory").unwrap();
        let mut headers = HeaderMap::new();
        assert!(!routes.placement(&headers, 0.5).unwrap().strict);
        headers.insert("x-weft-route", HeaderValue::from_static("canary"));
        assert!(routes.placement(&headers, 0.5).unwrap().strict);
    }

    #[test]
    fn the_split_follows_the_weights() {
        let table = RouteTable::from_toml(TABLE).unwrap();
        let routes = table.service("inventory").unwrap();
        let headers = HeaderMap::new();
        let mut new = 0;
        for n in 0..10_000 {
            let roll = f64::from(n) / 10_000.0;
            if routes.subset_for(&headers, roll).unwrap().attributes()["version"] == "1.5" {
                new += 1;
            }
        }
        assert_eq!(new, 500);
        assert_eq!(
            routes.subset_for(&headers, 1.0).unwrap().to_string(),
            "version=1.5"
        );
        // No rule that places calls: anywhere.
        let timing_only =
            RouteTable::from_toml("[services.x]\ndefault = { attempts = 2 }").unwrap();
        assert_eq!(
            timing_only.service("x").unwrap().subset_for(&headers, 0.3),
            None
        );
    }

    #[test]
    fn method_policies_take_the_most_specific_rule_then_the_default() {
        let table = RouteTable::from_toml(TABLE).unwrap();
        let routes = table.service("inventory").unwrap();
        let get = routes.policy_for("/weft.inventory.v1.InventoryService/GetStock");
        assert_eq!(get.timeout, Some(Duration::from_millis(300)));
        assert_eq!(get.attempts, Some(3));
        assert_eq!(
            get.retry_on.as_deref(),
            Some(&[Code::Unavailable, Code::ResourceExhausted][..])
        );
        let reserve = routes.policy_for("/weft.inventory.v1.InventoryService/ReserveStock");
        assert_eq!(
            (reserve.timeout, reserve.attempts, reserve.retry_on),
            (Some(Duration::from_secs(2)), Some(1), None)
        );
        let other = routes.policy_for("/grpc.health.v1.Health/Check");
        assert_eq!(other.timeout, Some(Duration::from_secs(2)));
        assert_eq!(other.attempts, None);
    }

    #[test]
    fn a_malformed_table_is_refused_with_its_place() {
        for (bad, says) in [
            ("[services.x]\nsplitt = []", "unknown field"),
            (
                "[services.x]\nsplit = [{ subset = {}, weight = 1 }]",
                "services.x.split[0]: a subset names at least one attribute",
            ),
            (
                "[services.x]\nsplit = [{ subset = { v = \"1\" }, weight = 0 }]",
                "services.x.split: the weights add up to zero",
            ),
            (
                "[services.x]\nsplit = [{ subset = { v = \"1\" }, weight = 2000000 }]",
                "at most 1000000",
            ),
            (
                "[services.x]\nsplit = [{ subset = { v = \"1\" }, weight = -1 }]",
                "routes do not parse",
            ),
            (
                "[services.x]\nmatch = [{ header = \"grpc-timeout\", value = \"1\", subset = { v = \"1\" } }]",
                "services.x.match[0]",
            ),
            (
                "[services.x]\nmatch = [{ header = \"bad header\", value = \"1\", subset = { v = \"1\" } }]",
                "not a header",
            ),
            (
                "[services.x]\nmethod = [{ name = \"Nope\", attempts = 2 }]",
                "services.x.method[0]: methods look like",
            ),
            (
                "[services.x]\nmethod = [{ name = \"a.B/C\", attempts = 9 }]",
                "attempts 9",
            ),
            (
                "[services.x]\nmethod = [{ name = \"a.B/C\", retry_on = [\"NOT_FOUND\"] }]",
                "\"NOT_FOUND\" is not a status code",
            ),
            (
                "[services.x]\ndefault = { timeout = \"soon\" }",
                "services.x.default: timeout",
            ),
            ("[services.\"no such\"]", "is not a service name"),
        ] {
            let e = RouteTable::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(RouteTable::from_toml("").unwrap(), RouteTable::default());
    }

    #[test]
    fn a_subset_holds_the_endpoints_with_all_its_attributes() {
        let s = Subset(attrs(&[("version", "1.5"), ("zone", "a")]));
        assert!(s.contains(&attrs(&[("version", "1.5"), ("zone", "a"), ("x", "y")])));
        assert!(!s.contains(&attrs(&[("version", "1.5")])));
        assert!(!s.contains(&attrs(&[("version", "1.4"), ("zone", "a")])));
        assert_eq!(s.to_string(), "version=1.5,zone=a");
    }
}
