//! Discovery's errors.

/// What can go wrong registering or resolving.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// The discovery setting does not name a known backend or is malformed.
    #[error("invalid discovery setting {setting:?}: {reason}")]
    InvalidSetting {
        /// The setting as given.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A registration is not acceptable (too many attributes, bad names).
    #[error("invalid registration: {0}")]
    InvalidRegistration(String),
    /// The namespace or service does not exist in the backend.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// "namespace", "service" or "instance".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The backend refused the call rate; retry later.
    #[error("throttled by the discovery backend: {0}")]
    Throttled(String),
    /// An operation did not finish within its bound.
    #[error("{0} did not finish in time")]
    Timeout(String),
    /// The backend reported a failure or could not be reached.
    #[error("discovery backend error: {0}")]
    Backend(String),
    /// Reading or writing local records failed.
    #[error("local registry I/O: {0}")]
    Io(String),
}

impl DiscoveryError {
    /// Whether the error is the backend asking us to slow down.
    pub fn is_throttling(&self) -> bool {
        matches!(self, Self::Throttled(_))
    }
}

impl From<std::io::Error> for DiscoveryError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}
