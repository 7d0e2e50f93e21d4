//! `weft.toml`: the mesh `weft up` runs. A manifest lists services, each
//! with how to start it (a binary, or a cargo package built first), how many
//! instances, extra environment, its authorization policy and what it waits
//! for. Without a manifest `weft up` runs Weft's own demo from
//! [`Manifest::demo`]. Parsing refuses unknown keys, names that could not be
//! a service's name, and dependencies that are missing or circular, so a
//! typo fails at start with its place named, not halfway through.
//!
//! ```toml
//! trust_domain = "weft.local"   # of a CA made now (an existing CA keeps its own)
//! seed = "demo"                 # the demo shop, once inventory and payments are healthy
//!
//! [[service]]
//! name = "inventory"            # registers under this name; its certificate names it
//! binary = "weft-inventory"     # a path (relative to this file) or a name beside weft, then on PATH
//! replicas = 2
//! policy = ["policy/inventory.toml"]  # files relative to this file, concatenated
//! env = { WEFT_DB_POOL_SIZE = "8" }
//!
//! [[service]]
//! name = "wishlist"
//! package = "weft-wishlist"     # `cargo build -p weft-wishlist` first, then its binary
//! depends_on = ["inventory"]    # started once every inventory instance is healthy
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The manifest `weft up` runs when given none: Weft's three services, two
/// instances each, their shipped policies, and the demo shop.
const DEMO: &str = r#"
seed = "demo"

[[service]]
name = "inventory"
binary = "weft-inventory"

[[service]]
name = "payments"
binary = "weft-payments"

[[service]]
name = "orders"
binary = "weft-orders"
depends_on = ["inventory", "payments"]
env = { WEFT_MERCHANT_ACCOUNT = "{demo.merchant}" }
"#;

/// The policies Weft ships for its own services, built in so the demo runs
/// from any directory; a manifest that names no policy for one of these
/// services gets its shipped one.
pub const SHIPPED_POLICIES: [(&str, &str); 3] = [
    (
        "inventory",
        include_str!("../../config/policy/inventory.toml"),
    ),
    (
        "payments",
        include_str!("../../config/policy/payments.toml"),
    ),
    ("orders", include_str!("../../config/policy/orders.toml")),
];

/// The most instances of one service a manifest may ask for: each is a
/// process with its own pool of database connections.
pub const MAX_REPLICAS: usize = 16;

/// Why a manifest cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The TOML does not parse or has a key the format does not know.
    #[error("{0}")]
    Parse(String),
    /// A service's entry is wrong.
    #[error("service {service}: {reason}")]
    Service {
        /// The service's name (or its position when the name is the problem).
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// A key outside the services is wrong.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    trust_domain: Option<String>,
    seed: Option<String>,
    #[serde(default, rename = "service")]
    services: Vec<ServiceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    name: String,
    binary: Option<String>,
    package: Option<String>,
    bin: Option<String>,
    replicas: Option<usize>,
    #[serde(default)]
    policy: Vec<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A seed: data made once the services it needs are healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// The demo shop: three products in inventory, a merchant and two
    /// customers' accounts in payments.
    Demo,
}

impl Seed {
    /// The services that must be healthy before the seed runs.
    pub fn needs(self) -> &'static [&'static str] {
        match self {
            Self::Demo => &["inventory", "payments"],
        }
    }
}

/// How an instance's program is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A path (absolute, or relative to the manifest), or a bare name found
    /// beside the weft binary, then on PATH.
    Binary(String),
    /// A cargo package built with `cargo build -p` before the mesh starts,
    /// and its binary `bin`.
    Package {
        /// The package.
        package: String,
        /// Its binary target.
        bin: String,
    },
}

/// Where an instance's policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// Files, concatenated in order (each holds `[[allow]]` rules).
    Files(Vec<PathBuf>),
    /// The policy Weft ships for the service of that name.
    Shipped(&'static str),
    /// No policy: every caller of the trust domain is allowed.
    Open,
}

/// One service of a manifest.
#[derive(Debug, Clone)]
pub struct Service {
    /// The name it registers under and its certificate names (a DNS label).
    pub name: String,
    /// How its program is found.
    pub program: Program,
    /// How many instances run, 1 to [`MAX_REPLICAS`].
    pub replicas: usize,
    /// Its authorization policy.
    pub policy: PolicySource,
    /// The services whose instances must all be healthy before it starts;
    /// each is in the manifest and the graph has no cycle.
    pub depends_on: Vec<String>,
    /// Extra environment, over what `weft up` sets; `{demo.merchant}` in a
    /// value becomes the demo's merchant account.
    pub env: BTreeMap<String, String>,
}

/// A mesh to run.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The trust domain of a CA made now.
    pub trust_domain: Option<String>,
    /// Data made once the services it needs are healthy.
    pub seed: Option<Seed>,
    /// The services, in an order that starts every service after the ones
    /// it depends on (and otherwise as written).
    pub services: Vec<Service>,
    /// The directory relative paths are resolved from.
    pub dir: PathBuf,
}

impl Manifest {
    /// Weft's own demo: inventory, payments and orders with the demo shop.
    pub fn demo() -> Result<Self, ManifestError> {
        Self::parse(DEMO, Path::new("."))
    }

    /// Reads the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &dir)
    }

    /// Parses a manifest whose relative paths are relative to `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, ManifestError> {
        let file: ManifestFile =
            toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        let seed = match file.seed.as_deref() {
            None => None,
            Some("demo") => Some(Seed::Demo),
            Some(other) => {
                return Err(ManifestError::Invalid(format!(
                    "seed {other:?} is not known (the one seed is \"demo\")"
                )));
            }
        };
        if file.services.is_empty() {
            return Err(ManifestError::Invalid(
                "the manifest lists no [[service]]".into(),
            ));
        }
        let mut services = Vec::new();
        let mut names = BTreeSet::new();
        for (i, s) in file.services.into_iter().enumerate() {
            let service = Service::from_file(s, i, dir)?;
            if !names.insert(service.name.clone()) {
                return Err(ManifestError::Service {
                    service: service.name,
                    reason: "listed twice".into(),
                });
            }
            services.push(service);
        }
        for s in &services {
            if let Some(missing) = s.depends_on.iter().find(|d| !names.contains(*d)) {
                return Err(ManifestError::Service {
                    service: s.name.clone(),
                    reason: format!("depends on {missing}, which the manifest does not list"),
                });
            }
        }
        if let Some(seed) = seed
            && let Some(missing) = seed.needs().iter().find(|n| !names.contains(**n))
        {
            return Err(ManifestError::Invalid(format!(
                "seed \"demo\" needs service {missing}, which the manifest does not list"
            )));
        }
        Ok(Self {
            trust_domain: file.trust_domain,
            seed,
            services: in_start_order(services)?,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `n` instances of every service (`weft up --replicas`), within
    /// the same bound a manifest's `replicas` has.
    pub fn set_replicas(&mut self, n: usize) -> Result<(), ManifestError> {
        let n = replicas(n).map_err(ManifestError::Invalid)?;
        for s in &mut self.services {
            s.replicas = n;
        }
        Ok(())
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl Service {
    fn from_file(s: ServiceFile, position: usize, dir: &Path) -> Result<Self, ManifestError> {
        if !is_label(&s.name) {
            return Err(ManifestError::Service {
                service: format!("#{}", position + 1),
                reason: format!(
                    "name {:?} must be 1 to 63 lowercase letters, digits or '-', starting with a letter",
                    s.name
                ),
            });
        }
        let bad = |reason: String| ManifestError::Service {
            service: s.name.clone(),
            reason,
        };
        let program = match (s.binary, s.package, s.bin) {
            (Some(binary), None, None) if !binary.is_empty() => Program::Binary(binary),
            (None, Some(package), bin) if !package.is_empty() => Program::Package {
                bin: bin.unwrap_or_else(|| package.clone()),
                package,
            },
            (Some(_), _, Some(_)) => return Err(bad("bin goes with package, not binary".into())),
            (Some(_), Some(_), _) => return Err(bad("give binary or package, not both".into())),
            _ => {
                return Err(bad(
                    "give binary (a program) or package (a cargo package)".into()
                ));
            }
        };
        let replicas = replicas(s.replicas.unwrap_or(2)).map_err(bad)?;
        let policy = if !s.policy.is_empty() {
            PolicySource::Files(s.policy.iter().map(|p| dir.join(p)).collect())
        } else if let Some((name, _)) = SHIPPED_POLICIES.iter().find(|(n, _)| *n == s.name) {
            PolicySource::Shipped(name)
        } else {
            PolicySource::Open
        };
        if let Some(key) = s.env.keys().find(|k| !is_env_name(k)) {
            return Err(bad(format!("env: {key:?} is not a variable name")));
        }
        if s.depends_on.contains(&s.name) {
            return Err(bad("depends on itself".into()));
        }
        Ok(Self {
            name: s.name,
            program,
            replicas,
            policy,
            depends_on: s.depends_on,
            env: s.env,
        })
    }
}

/// The text of a policy from `source` for `trust_domain`: the files
/// concatenated (each a list of `[[allow]]` rules) or the shipped policy,
/// with the trust domain policies are written for (`weft.local`) made
/// `trust_domain`'s; checked to parse. `None` for an open service (no
/// policy: an empty one would refuse every caller). `weft up` and the test
/// harness write policies with it.
pub fn policy_text(
    source: &PolicySource,
    trust_domain: &str,
) -> Result<Option<String>, ManifestError> {
    let text = match source {
        PolicySource::Open => return Ok(None),
        PolicySource::Shipped(name) => SHIPPED_POLICIES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| (*t).to_owned())
            .ok_or_else(|| ManifestError::Invalid(format!("no shipped policy for {name}")))?,
        PolicySource::Files(files) => {
            let mut text = String::new();
            for f in files {
                text.push_str(
                    &std::fs::read_to_string(f).map_err(|e| ManifestError::Read {
                        path: f.display().to_string(),
                        reason: e.to_string(),
                    })?,
                );
                text.push('\n');
            }
            text
        }
    };
    let text = text.replace("spiffe://weft.local/", &format!("spiffe://{trust_domain}/"));
    weft_mesh::Policy::from_toml(&text).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    Ok(Some(text))
}

/// `n` if it is a number of instances a service may have.
fn replicas(n: usize) -> Result<usize, String> {
    if n == 0 || n > MAX_REPLICAS {
        return Err(format!("replicas must be 1 to {MAX_REPLICAS}, not {n}"));
    }
    Ok(n)
}

/// Orders services so each comes after those it depends on, keeping the
/// written order among the ones free to start; refuses a cycle.
fn in_start_order(mut pending: Vec<Service>) -> Result<Vec<Service>, ManifestError> {
    let mut ordered: Vec<Service> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|s| {
            s.depends_on
                .iter()
                .all(|d| ordered.iter().any(|o| &o.name == d))
        });
        match ready {
            Some(i) => ordered.push(pending.remove(i)),
            None => {
                let names: Vec<_> = pending.iter().map(|s| s.name.as_str()).collect();
                return Err(ManifestError::Invalid(format!(
                    "depends_on forms a cycle among {}",
                    names.join(", ")
                )));
            }
        }
    }
    Ok(ordered)
}

/// A DNS label: what a service name must be to register in Cloud Map and
/// appear in a SPIFFE id.
fn is_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/m"))
    }

    #[test]
    fn the_demo_starts_orders_after_what_it_calls() {
        let demo = Manifest::demo().unwrap();
        let names: Vec<_> = demo.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["inventory", "payments", "orders"]);
        assert_eq!(demo.seed, Some(Seed::Demo));
        assert!(demo.services.iter().all(|s| s.replicas == 2));
        assert_eq!(
            demo.service("orders").unwrap().policy,
            PolicySource::Shipped("orders")
        );
    }

    #[test]
    fn dependencies_reorder_and_paths_resolve_from_the_manifest() {
        let m = parse(
            r#"
            [[service]]
            name = "wishlist"
            package = "weft-wishlist"
            depends_on = ["catalog"]
            policy = ["policy/wishlist.toml", "/etc/extra.toml"]
            replicas = 3
            env = { RUST_LOG = "debug" }

            [[service]]
            name = "catalog"
            binary = "bin/catalog"
            "#,
        )
        .unwrap();
        let names: Vec<_> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["catalog", "wishlist"]);
        let wishlist = m.service("wishlist").unwrap();
        assert_eq!(
            wishlist.program,
            Program::Package {
                package: "weft-wishlist".into(),
                bin: "weft-wishlist".into()
            }
        );
        assert_eq!(
            wishlist.policy,
            PolicySource::Files(vec![
                PathBuf::from("/m/policy/wishlist.toml"),
                PathBuf::from("/etc/extra.toml")
            ])
        );
        assert_eq!(wishlist.replicas, 3);
        assert_eq!(m.service("catalog").unwrap().policy, PolicySource::Open);
    }

    #[test]
    fn mistakes_are_refused_with_their_place() {
        let cases = [
            (
                "[[service]]\nname = \"a\"\nbinary = \"x\"\nreplica = 2",
                "replica",
            ),
            ("[[service]]\nname = \"A\"\nbinary = \"x\"", "#1"),
            ("[[service]]\nname = \"a\"", "service a: give binary"),
            (
                "[[service]]\nname = \"a\"\nbinary = \"x\"\npackage = \"y\"",
                "not both",
            ),
            (
                "[[service]]\nname = \"a\"\nbinary = \"x\"\nreplicas = 0",
                "replicas must be 1 to 16",
            ),
            (
                "[[service]]\nname = \"a\"\nbinary = \"x\"\ndepends_on = [\"b\"]",
                "depends on b",
            ),
            (
                "[[service]]\nname = \"a\"\nbinary = \"x\"\ndepends_on = [\"b\"]\n[[service]]\nname = \"b\"\nbinary = \"x\"\ndepends_on = [\"a\"]",
                "cycle among a, b",
            ),
            (
                "[[service]]\nname = \"a\"\nbinary = \"x\"\n[[service]]\nname = \"a\"\nbinary = \"y\"",
                "listed twice",
            ),
            (
                "seed = \"demo\"\n[[service]]\nname = \"a\"\nbinary = \"x\"",
                "needs service inventory",
            ),
            (
                "seed = \"shop\"\n[[service]]\nname = \"a\"\nbinary = \"x\"",
                "not known",
            ),
            (
                "[[service]]\nname = \"a\"\nbinary = \"x\"\nenv = { \"A B\" = \"1\" }",
                "not a variable name",
            ),
            ("trust_domain = \"x\"", "no [[service]]"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
