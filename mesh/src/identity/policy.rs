//! Authorization policy: which caller identities may call which methods.
//! Loaded from TOML; wherever a policy is loaded, anything it does not allow
//! is denied. Health checks are always allowed to authenticated callers of
//! the server's own trust domain, so probes and load balancers work under
//! any policy. A caller from another trust domain is refused unless a rule
//! names that trust domain (`*` alone does not). A pattern matches exactly,
//! or ends at a separator (`/*`, `.*`) so that it cannot reach past a name:
//! `pkg.Service*` would also match `pkg.ServiceX`, and is refused with its
//! name.
//!
//! ```toml
//! [[allow]]
//! methods = ["weft.inventory.v1.InventoryService/*"]
//! callers = ["spiffe://weft.local/service/orders"]
//!
//! [[allow]]
//! methods = ["weft.inventory.v1.InventoryService/GetStock", "grpc.reflection.*"]
//! callers = ["spiffe://weft.local/operator/*"]
//!
//! # Each operator may make 20 calls a second (bursts of 40) to inventory.
//! [[limit]]
//! methods = ["weft.inventory.v1.InventoryService/*"]
//! callers = ["spiffe://weft.local/operator/*"]
//! rate = 20
//! burst = 40
//! ```
//!
//! A `[[limit]]` gives every caller identity it matches a token bucket of
//! its own per rule (a pattern does not pool its callers): `rate` calls a
//! second, up to `burst` at once (`rate` when not given, at least one).
//! The first rule that matches a call applies; a call no rule matches is
//! not limited.

use std::path::Path;

use serde::Deserialize;

use crate::identity::SpiffeId;

/// Methods every authenticated caller may call.
const ALWAYS_ALLOWED: &str = "grpc.health.v1.Health/";

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The TOML does not parse or does not have the expected shape.
    #[error("policy does not parse: {0}")]
    Parse(String),
    /// A pattern is malformed.
    #[error("rule {rule}: {reason}")]
    Rule {
        /// The rule's position, from 1.
        rule: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Vec<RuleFile>,
    #[serde(default)]
    limit: Vec<LimitFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitFile {
    methods: Vec<String>,
    callers: Vec<String>,
    rate: f64,
    burst: Option<f64>,
}

/// The highest rate or burst a limit may set: beyond it a limit means
/// nothing, and a typo should not pass for one.
const MOST_PER_SECOND: f64 = 1_000_000.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    methods: Vec<String>,
    callers: Vec<String>,
}

/// A pattern: an exact string, or a prefix followed by `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Result<Self, String> {
        match s.find('*') {
            None => Ok(Self::Exact(s.to_owned())),
            Some(0) if s == "*" => Ok(Self::Prefix(String::new())),
            Some(i) if i == s.len() - 1 => {
                if s[..i].ends_with(['/', '.']) {
                    Ok(Self::Prefix(s[..i].to_owned()))
                } else {
                    Err(format!(
                        "pattern {s:?} must end at a separator ('/*' or '.*') or have no '*'"
                    ))
                }
            }
            Some(_) => Err(format!("pattern {s:?}: '*' may only end a pattern")),
        }
    }

    /// Whether this is `*`, which names no trust domain.
    fn is_any(&self) -> bool {
        matches!(self, Self::Prefix(p) if p.is_empty())
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(e) => e == s,
            Self::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    methods: Vec<Pattern>,
    callers: Vec<Pattern>,
}

impl Rule {
    /// A rule from its method and caller patterns; why not, for the
    /// message that names the rule.
    fn parse(methods: &[String], callers: &[String]) -> Result<Self, String> {
        if methods.is_empty() || callers.is_empty() {
            return Err("needs at least one method and one caller".into());
        }
        let methods = methods
            .iter()
            .map(|m| {
                if m != "*" && !m.contains('/') && !m.ends_with('*') {
                    return Err(format!(
                        "method {m:?} must look like package.Service/Method"
                    ));
                }
                Pattern::parse(m.trim_start_matches('/'))
            })
            .collect::<Result<_, _>>()?;
        let callers = callers
            .iter()
            .map(|c| {
                if c != "*" && !c.starts_with("spiffe://") {
                    return Err(format!(
                        "caller {c:?} must be a spiffe:// identity or pattern"
                    ));
                }
                Pattern::parse(c)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { methods, callers })
    }

    fn matches(&self, caller: &str, method: &str, foreign: bool) -> bool {
        self.methods.iter().any(|m| m.matches(method))
            && self
                .callers
                .iter()
                .any(|c| c.matches(caller) && !(foreign && c.is_any()))
    }
}

/// A rate limit for the callers and methods it matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// The rule's position among the `[[limit]]` rules, from 1 (its name
    /// in metrics).
    pub rule: usize,
    /// Calls a second, per caller identity.
    pub rate: f64,
    /// Calls at once after a quiet spell.
    pub burst: f64,
}

/// A policy servers read on every call while it may be replaced (when its
/// file changes): a lock-free swap, so a call never waits for a reload and
/// always sees one whole policy.
#[derive(Debug, Clone)]
pub struct SharedPolicy(std::sync::Arc<arc_swap::ArcSwap<Policy>>);

impl SharedPolicy {
    /// Starts from `policy`.
    pub fn new(policy: Policy) -> Self {
        Self(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(policy)))
    }

    /// The policy now.
    pub fn load(&self) -> arc_swap::Guard<std::sync::Arc<Policy>> {
        self.0.load()
    }

    /// Replaces the policy for every call from now on.
    pub fn store(&self, policy: std::sync::Arc<Policy>) {
        self.0.store(policy);
    }
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    limits: Vec<(Rule, Limit)>,
}

impl Policy {
    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text)
    }

    /// Parses a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let rules = file
            .allow
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let err = |reason: String| PolicyError::Rule {
                    rule: i + 1,
                    reason,
                };
                Rule::parse(&r.methods, &r.callers).map_err(err)
            })
            .collect::<Result<_, _>>()?;
        let limits = file
            .limit
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let rule = i + 1;
                let err = |reason: String| PolicyError::Rule {
                    rule,
                    reason: format!("limit: {reason}"),
                };
                let matching = Rule::parse(&l.methods, &l.callers).map_err(err)?;
                let burst = l.burst.unwrap_or(l.rate.max(1.0));
                if !(l.rate > 0.0 && l.rate <= MOST_PER_SECOND) {
                    return Err(err(format!(
                        "rate {} must be above 0 and at most {MOST_PER_SECOND} calls a second",
                        l.rate
                    )));
                }
                if !(1.0..=MOST_PER_SECOND).contains(&burst) {
                    return Err(err(format!(
                        "burst {burst} must be from 1 to {MOST_PER_SECOND} calls"
                    )));
                }
                Ok((
                    matching,
                    Limit {
                        rule,
                        rate: l.rate,
                        burst,
                    },
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules, limits })
    }

    /// Whether the policy sets any rate limit.
    pub fn has_limits(&self) -> bool {
        !self.limits.is_empty()
    }

    /// The limit on `caller` calling `path` on a server of
    /// `own_trust_domain`: the first `[[limit]]` rule that matches.
    pub fn limit_for(
        &self,
        own_trust_domain: &str,
        caller: &SpiffeId,
        path: &str,
    ) -> Option<Limit> {
        if self.limits.is_empty() {
            return None;
        }
        let method = path.trim_start_matches('/');
        let foreign = caller.trust_domain() != own_trust_domain;
        let caller = caller.to_string();
        self.limits
            .iter()
            .find(|(rule, _)| rule.matches(&caller, method, foreign))
            .map(|(_, limit)| *limit)
    }

    /// Whether `caller` may call `path` (`/package.Service/Method`) on a
    /// server of `own_trust_domain`.
    pub fn allows(&self, own_trust_domain: &str, caller: &SpiffeId, path: &str) -> bool {
        let method = path.trim_start_matches('/');
        let foreign = caller.trust_domain() != own_trust_domain;
        if method.starts_with(ALWAYS_ALLOWED) && !foreign {
            return true;
        }
        let caller = caller.to_string();
        self.rules
            .iter()
            .any(|rule| rule.matches(&caller, method, foreign))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [[allow]]
        methods = ["weft.inventory.v1.InventoryService/*"]
        callers = ["spiffe://weft.local/service/orders"]

        [[allow]]
        methods = ["weft.inventory.v1.InventoryService/GetStock"]
        callers = ["spiffe://weft.local/operator/*"]
    "#;

    const TD: &str = "weft.local";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn allows_only_what_a_rule_names() {
        let p = Policy::from_toml(POLICY).unwrap();
        let orders = id("spiffe://weft.local/service/orders");
        let alice = id("spiffe://weft.local/operator/alice");
        let payments = id("spiffe://weft.local/service/payments");
        let allows = |caller: &SpiffeId, path: &str| p.allows(TD, caller, path);
        assert!(allows(
            &orders,
            "/weft.inventory.v1.InventoryService/ReserveStock"
        ));
        assert!(allows(
            &alice,
            "/weft.inventory.v1.InventoryService/GetStock"
        ));
        assert!(!allows(
            &alice,
            "/weft.inventory.v1.InventoryService/ReserveStock"
        ));
        assert!(!allows(
            &payments,
            "/weft.inventory.v1.InventoryService/GetStock"
        ));
        assert!(!allows(
            &orders,
            "/weft.payments.v1.PaymentsService/Authorize"
        ));
        // Health is open to every authenticated caller of the trust domain.
        assert!(allows(&payments, "/grpc.health.v1.Health/Check"));
        // An empty policy denies everything else.
        assert!(!Policy::from_toml("").unwrap().allows(TD, &orders, "/x.Y/Z"));
    }

    #[test]
    fn the_first_matching_limit_applies_per_rule() {
        let p = Policy::from_toml(
            r#"
            [[limit]]
            methods = ["weft.orders.v1.OrdersService/PlaceOrder"]
            callers = ["spiffe://weft.local/operator/*"]
            rate = 5
            [[limit]]
            methods = ["weft.orders.v1.OrdersService/*"]
            callers = ["*"]
            rate = 100
            burst = 300
            "#,
        )
        .unwrap();
        assert!(p.has_limits());
        let alice = id("spiffe://weft.local/operator/alice");
        let orders = id("spiffe://weft.local/service/orders");
        let place = "/weft.orders.v1.OrdersService/PlaceOrder";
        assert_eq!(
            p.limit_for(TD, &alice, place),
            Some(Limit {
                rule: 1,
                rate: 5.0,
                burst: 5.0
            })
        );
        assert_eq!(p.limit_for(TD, &orders, place).map(|l| l.rule), Some(2));
        assert_eq!(
            p.limit_for(TD, &alice, "/weft.orders.v1.OrdersService/GetOrder")
                .map(|l| (l.rule, l.burst)),
            Some((2, 300.0))
        );
        assert_eq!(
            p.limit_for(TD, &alice, "/weft.payments.v1.PaymentsService/Void"),
            None
        );
        // `*` names no trust domain, for limits as for permissions.
        let foreign = id("spiffe://other.example/service/orders");
        assert_eq!(p.limit_for(TD, &foreign, place), None);
        assert!(!Policy::from_toml(POLICY).unwrap().has_limits());
    }

    #[test]
    fn malformed_limits_are_explained() {
        for (bad, says) in [
            (
                "[[limit]]\nmethods = [\"*\"]\ncallers = [\"*\"]\nrate = 0",
                "rule 1: limit: rate 0",
            ),
            (
                "[[limit]]\nmethods = [\"*\"]\ncallers = [\"*\"]\nrate = 1e9",
                "at most",
            ),
            (
                "[[limit]]\nmethods = [\"*\"]\ncallers = [\"*\"]\nrate = 5\nburst = 0.5",
                "burst 0.5",
            ),
            (
                "[[limit]]\nmethods = [\"*\"]\ncallers = [\"*\"]\nrate = nan",
                "rate NaN",
            ),
            (
                "[[limit]]\nmethods = [\"*\"]\ncallers = [\"*\"]\nrate = 5\nper = \"all\"",
                "unknown field",
            ),
            ("[[limit]]\nmethods = [\"*\"]\ncallers = [\"*\"]", "rate"),
            (
                "[[limit]]\nmethods = [\"x\"]\ncallers = [\"*\"]\nrate = 1",
                "package.Service/Method",
            ),
        ] {
            let e = Policy::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn malformed_policies_are_explained() {
        for (bad, says) in [
            ("[[allow]]\nmethods = []\ncallers = [\"*\"]", "rule 1"),
            (
                "[[allow]]\nmethods = [\"Nope\"]\ncallers = [\"*\"]",
                "package.Service/Method",
            ),
            (
                "[[allow]]\nmethods = [\"*\"]\ncallers = [\"orders\"]",
                "spiffe://",
            ),
            (
                "[[allow]]\nmethods = [\"a.B/*x\"]\ncallers = [\"*\"]",
                "'*' may only end",
            ),
            (
                "[[allow]]\nmethods = [\"weft.inventory.v1.InventoryService*\"]\ncallers = [\"*\"]",
                "\"weft.inventory.v1.InventoryService*\" must end at a separator",
            ),
            (
                "[[allow]]\nmethods = [\"a.B/Get*\"]\ncallers = [\"*\"]",
                "\"a.B/Get*\" must end at a separator",
            ),
            (
                "[[allow]]\nmethods = [\"*\"]\ncallers = [\"spiffe://weft.local*\"]",
                "\"spiffe://weft.local*\" must end at a separator",
            ),
            ("[[deny]]\nmethods = [\"*\"]", "does not parse"),
        ] {
            let err = Policy::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn callers_of_another_trust_domain_need_a_rule_that_names_it() {
        let p = Policy::from_toml(
            r#"
            [[allow]]
            methods = ["pkg.Svc/*"]
            callers = ["*"]

            [[allow]]
            methods = ["pkg.Svc/Read"]
            callers = ["spiffe://partner.example/service/*"]
            "#,
        )
        .unwrap();
        let ours = id("spiffe://weft.local/service/orders");
        let partner = id("spiffe://partner.example/service/billing");
        let stranger = id("spiffe://weft.localhost/service/orders");
        assert!(p.allows(TD, &ours, "/pkg.Svc/Write"));
        assert!(p.allows(TD, &partner, "/pkg.Svc/Read"));
        assert!(
            !p.allows(TD, &partner, "/pkg.Svc/Write"),
            "`*` names no trust domain"
        );
        assert!(!p.allows(TD, &stranger, "/pkg.Svc/Read"));
        assert!(!p.allows(TD, &stranger, "/grpc.health.v1.Health/Check"));
    }

    #[test]
    fn a_pattern_does_not_reach_past_a_separator() {
        let p = Policy::from_toml(
            "[[allow]]\nmethods = [\"weft.inventory.v1.InventoryService/*\"]\ncallers = [\"spiffe://weft.local/operator/*\"]",
        )
        .unwrap();
        let alice = id("spiffe://weft.local/operator/alice");
        assert!(p.allows(TD, &alice, "/weft.inventory.v1.InventoryService/GetStock"));
        assert!(!p.allows(TD, &alice, "/weft.inventory.v1.InventoryServiceX/GetStock"));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const TD: &str = "weft.local";

    fn label() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,12}"
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "\\PC{0,400}") {
            let _ = Policy::from_toml(&text);
        }

        #[test]
        fn a_service_pattern_matches_its_methods_and_no_other_service(
            service in "[A-Z][A-Za-z]{0,12}", suffix in "[A-Za-z0-9]{1,6}",
            method in "[A-Z][A-Za-z]{0,12}", caller in label(),
        ) {
            let p = Policy::from_toml(&format!(
                "[[allow]]\nmethods = [\"pkg.v1.{service}/*\"]\ncallers = [\"spiffe://{TD}/service/*\"]"
            )).unwrap();
            let id = SpiffeId::service(TD, &caller).unwrap();
            let path = format!("/pkg.v1.{service}/{method}");
            prop_assert!(p.allows(TD, &id, &path));
            // A longer service name is another service, never matched.
            let other = format!("/pkg.v1.{service}{suffix}/{method}");
            prop_assert!(!p.allows(TD, &id, &other));
        }

        #[test]
        fn a_pattern_with_a_star_not_after_a_separator_is_refused_by_name(
            prefix in "[a-z][a-z.]{0,10}[a-z]", tail in "[A-Za-z]{1,8}",
        ) {
            let pattern = format!("{prefix}/{tail}*");
            let err = Policy::from_toml(&format!("[[allow]]\nmethods = [\"{pattern}\"]\ncallers = [\"*\"]"))
                .unwrap_err()
                .to_string();
            prop_assert!(err.contains(&pattern), "{}", err);
        }

        #[test]
        fn a_caller_of_another_trust_domain_is_never_let_in_by_star(
            td in label(), name in label(), method in "[A-Z][a-z]{0,8}",
        ) {
            prop_assume!(td != TD);
            let p = Policy::from_toml("[[allow]]\nmethods = [\"*\"]\ncallers = [\"*\"]").unwrap();
            let stranger = SpiffeId::service(&td, &name).unwrap();
            let path = format!("/pkg.S/{method}");
            prop_assert!(!p.allows(TD, &stranger, &path));
            prop_assert!(!p.allows(TD, &stranger, "/grpc.health.v1.Health/Check"));
            let ours = SpiffeId::service(TD, &name).unwrap();
            prop_assert!(p.allows(TD, &ours, &path));
        }
    }
}
