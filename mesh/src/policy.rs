//! Authorization policy: which caller identities may call which methods.
//! Loaded from TOML; wherever a policy is loaded, anything it does not allow
//! is denied. Health checks are always allowed to authenticated callers, so
//! probes and load balancers work under any policy.
//!
//! ```toml
//! [[allow]]
//! methods = ["weft.inventory.v1.InventoryService/*"]
//! callers = ["spiffe://weft.local/service/orders"]
//!
//! [[allow]]
//! methods = ["weft.inventory.v1.InventoryService/Get*", "grpc.reflection.*"]
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
            Some(i) if i == s.len() - 1 => Ok(Self::Prefix(s[..i].to_owned())),
            Some(_) => Err(format!("{s:?}: '*' may only end a pattern")),
        }
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

    /// Whether `caller` may call `path` (`/package.Service/Method`).
    pub fn allows(&self, caller: &SpiffeId, path: &str) -> bool {
        let method = path.trim_start_matches('/');
        if method.starts_with(ALWAYS_ALLOWED) {
            return true;
        }
        let caller = caller.to_string();
        self.rules.iter().any(|rule| {
            rule.methods.iter().any(|m| m.matches(method))
                && rule.callers.iter().any(|c| c.matches(&caller))
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
        methods = ["weft.inventory.v1.InventoryService/Get*"]
        callers = ["spiffe://weft.local/operator/*"]
    "#;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn allows_only_what_a_rule_names() {
        let p = Policy::from_toml(POLICY).unwrap();
        let orders = id("spiffe://weft.local/service/orders");
        let alice = id("spiffe://weft.local/operator/alice");
        let payments = id("spiffe://weft.local/service/payments");
        assert!(p.allows(&orders, "/weft.inventory.v1.InventoryService/ReserveStock"));
        assert!(p.allows(&alice, "/weft.inventory.v1.InventoryService/GetStock"));
        assert!(!p.allows(&alice, "/weft.inventory.v1.InventoryService/ReserveStock"));
        assert!(!p.allows(&payments, "/weft.inventory.v1.InventoryService/GetStock"));
        assert!(!p.allows(&orders, "/weft.payments.v1.PaymentsService/Authorize"));
        // Health is open to every authenticated caller.
        assert!(p.allows(&payments, "/grpc.health.v1.Health/Check"));
        // An empty policy denies everything else.
        assert!(!Policy::from_toml("").unwrap().allows(&orders, "/x.Y/Z"));
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
            ("[[deny]]\nmethods = [\"*\"]", "does not parse"),
        ] {
            let err = Policy::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
