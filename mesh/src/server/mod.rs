//! The server side of the mesh: the accept loop and its limits, server TLS,
//! authorization, rate limits, load reports, deadlines, the retry bound across hops, the
//! drain and the server's metrics.

pub mod authorize;
pub mod deadline;
pub mod drain;
pub mod incoming;
pub mod limits;
pub mod load_report;
pub mod observe;
pub mod observed_body;
pub mod rate_limit;
pub mod retries;
pub mod scoped;
pub mod tls;
