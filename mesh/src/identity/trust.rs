//! Which certificate authorities may vouch for which identities. With one
//! CA per service (how Weft deploys on AWS Private CA, where IAM can limit
//! who issues from a CA but not what a CSR names), a certificate proves an
//! identity only when it chains to a CA scoped to that identity: a task
//! that can issue from inventory's CA cannot become payments.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::RootCertStore;

use crate::identity::{Kind, SpiffeId};

/// The CAs each identity must chain to.
#[derive(Debug, Clone, Default)]
pub enum Scopes {
    /// Every CA in the bundle vouches for every identity (one CA, as the
    /// PEM-file source and `weft certs` use).
    #[default]
    Unscoped,
    /// Keys are `service/<name>`, `operator/<name>`, `service/*`,
    /// `operator/*` or `*`; the most specific key present decides, and an
    /// identity no key covers is vouched for by nobody.
    Scoped(HashMap<String, Arc<RootCertStore>>),
}

/// What [`Scopes::for_identity`] answers.
#[derive(Debug, Clone)]
pub enum Vouch {
    /// Any CA in the bundle will do.
    Any,
    /// Only these CAs.
    Only(Arc<RootCertStore>),
    /// No CA may vouch for this identity.
    Nobody,
}

fn segment(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "service",
        Kind::Operator => "operator",
    }
}

impl Scopes {
    /// Which CAs may vouch for `id`.
    pub fn for_identity(&self, id: &SpiffeId) -> Vouch {
        let Self::Scoped(by_key) = self else {
            return Vouch::Any;
        };
        Self::keys_for(id)
            .iter()
            .find_map(|key| by_key.get(key))
            .map_or(Vouch::Nobody, |roots| Vouch::Only(roots.clone()))
    }

    /// The keys that cover `id`, most specific first.
    pub fn keys_for(id: &SpiffeId) -> [String; 3] {
        let kind = segment(id.kind());
        [
            format!("{kind}/{}", id.name()),
            format!("{kind}/*"),
            "*".to_owned(),
        ]
    }

    /// Whether `key` is a key [`Scopes::Scoped`] understands.
    pub fn valid_key(key: &str) -> bool {
        if key == "*" {
            return true;
        }
        match key.split_once('/') {
            Some(("service" | "operator", name)) => {
                name == "*" || SpiffeId::service("weft.local", name).is_ok()
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(keys: &[&str]) -> Scopes {
        Scopes::Scoped(
            keys.iter()
                .map(|k| (k.to_string(), Arc::new(RootCertStore::empty())))
                .collect(),
        )
    }

    fn decides(scopes: &Scopes, id: &SpiffeId) -> &'static str {
        match scopes.for_identity(id) {
            Vouch::Any => "any",
            Vouch::Only(_) => "only",
            Vouch::Nobody => "nobody",
        }
    }

    #[test]
    fn the_most_specific_key_decides_and_an_uncovered_identity_has_no_voucher() {
        let inventory = SpiffeId::service("td", "inventory").unwrap();
        let payments = SpiffeId::service("td", "payments").unwrap();
        let alice = SpiffeId::operator("td", "alice").unwrap();
        let scopes = scoped(&["service/inventory", "operator/*"]);
        assert_eq!(decides(&scopes, &inventory), "only");
        assert_eq!(decides(&scopes, &alice), "only");
        assert_eq!(decides(&scopes, &payments), "nobody");
        assert_eq!(decides(&scoped(&["*"]), &payments), "only");
        assert_eq!(decides(&Scopes::Unscoped, &payments), "any");
    }

    #[test]
    fn keys_are_a_kind_and_a_name_or_a_star() {
        for good in ["*", "service/inventory", "operator/*", "service/*"] {
            assert!(Scopes::valid_key(good), "{good}");
        }
        for bad in ["inventory", "service/", "robot/x", "service/In valid", "**"] {
            assert!(!Scopes::valid_key(bad), "{bad}");
        }
    }
}
