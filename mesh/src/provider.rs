//! The one crypto provider of the whole workspace: aws-lc-rs, the provider
//! the AWS SDK already uses. Configurations are built with it explicitly, so
//! nothing depends on a process-wide default being installed.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider for every TLS configuration Weft builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
