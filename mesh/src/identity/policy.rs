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
//! ```

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
}

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

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
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
                let rule = i + 1;
                let err = |reason: String| PolicyError::Rule { rule, reason };
                if r.methods.is_empty() || r.callers.is_empty() {
                    return Err(err("needs at least one method and one caller".into()));
                }
                let methods = r
                    .methods
                    .iter()
                    .map(|m| {
                        if m != "*" && !m.contains('/') && !m.ends_with('*') {
                            return Err(err(format!(
                                "method {m:?} must look like package.Service/Method"
                            )));
                        }
                        Pattern::parse(m.trim_start_matches('/')).map_err(err)
                    })
                    .collect::<Result<_, _>>()?;
                let callers = r
                    .callers
                    .iter()
                    .map(|c| {
                        if c != "*" && !c.starts_with("spiffe://") {
                            return Err(err(format!(
                                "caller {c:?} must be a spiffe:// identity or pattern"
                            )));
                        }
                        Pattern::parse(c).map_err(err)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Rule { methods, callers })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
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
        self.rules.iter().any(|rule| {
            rule.methods.iter().any(|m| m.matches(method))
                && rule
                    .callers
                    .iter()
                    .any(|c| c.matches(&caller) && !(foreign && c.is_any()))
        })
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
