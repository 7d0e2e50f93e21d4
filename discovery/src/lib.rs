//! How a Weft instance makes itself known and how a client finds the live
//! instances of a service: the [`Registry`] and [`Resolver`] traits, and the
//! Cloud Map, local and static backends behind one setting ([`Discovery`]).

pub mod backend;
pub mod backoff;
pub mod change;
pub mod cloudmap;
pub mod error;
pub mod local;
pub mod static_backend;
pub mod traits;
pub mod types;

pub use backend::{Discovery, Setting};
pub use change::Changes;
pub use error::DiscoveryError;
pub use traits::{Registry, Resolver};
pub use types::{
    Endpoint, Filter, Health, Registration, Snapshot, VERSION_ATTRIBUTE, ZONE_ATTRIBUTE, select,
};
