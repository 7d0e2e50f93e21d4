//! The local backend, Weft's embedded default on one machine: a directory of
//! instance records (`<root>/<service>/<id>.instance`) kept alive by
//! heartbeats. A record whose file has not been rewritten within the TTL is
//! not served, so a crashed instance drops out on its own; nothing needs to be
//! installed or running besides the instances themselves.

mod record;
mod registry;
mod resolver;

pub use registry::LocalRegistry;
pub use resolver::LocalResolver;

use std::time::Duration;

/// How long a record lives without a heartbeat, unless configured.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);
/// How often watchers look at the directory, unless configured.
pub const DEFAULT_POLL: Duration = Duration::from_millis(200);
