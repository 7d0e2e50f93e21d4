//! Builds the AWS SDK configuration Weft's clients share and the client for Cloud Map from the standard configuration
//! chain (environment, profile, ECS task role, instance metadata), with
//! `AWS_ENDPOINT_URL` honoured, bounded timeouts, and the fix that lets the
//! data plane reach a custom endpoint.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_servicediscovery::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::endpoint::EndpointPrefix;

/// Where and how to reach Cloud Map; everything unset comes from the
/// standard AWS configuration chain.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// A custom endpoint (an emulator); else `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint_url: Option<String>,
    /// The region; else the chain's.
    pub region: Option<String>,
    /// Static credentials (access key, secret); else the chain's.
    pub static_credentials: Option<(String, String)>,
}

/// The SDK configuration for `options`: the standard chain with bounded
/// timeouts and brief SDK retries (Weft's own loops back off), shared by
/// every AWS client Weft builds.
pub async fn shared_config(options: &ClientOptions) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // Our pollers back off on their own; the SDK only retries briefly.
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(12))
                .build(),
        );
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(region) = &options.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some((key, secret)) = &options.static_credentials {
        loader = loader.credentials_provider(aws_sdk_servicediscovery::config::Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "weft-static",
        ));
    }
    loader.load().await
}

/// Builds a Cloud Map client.
pub async fn build_client(options: &ClientOptions) -> Client {
    let shared = shared_config(options).await;
    let custom_endpoint = shared.endpoint_url().is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_SERVICEDISCOVERY").is_some();
    let mut config = aws_sdk_servicediscovery::config::Builder::from(&shared);
    if custom_endpoint {
        config = config.interceptor(NoEndpointPrefix);
    }
    Client::from_conf(config.build())
}

/// Cloud Map sends `DiscoverInstances` and `DiscoverInstancesRevision` to a
/// `data-` prefixed host. Against AWS that is right; against a custom endpoint
/// such as `http://127.0.0.1:5000` the SDK would still prefix it and reach
/// `data-127.0.0.1`. This interceptor, installed only when a custom endpoint is
/// configured, removes the prefix before endpoint resolution.
#[derive(Debug)]
struct NoEndpointPrefix;

impl Intercept for NoEndpointPrefix {
    fn name(&self) -> &'static str {
        "NoEndpointPrefix"
    }

    fn modify_before_retry_loop(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().unset::<EndpointPrefix>();
        Ok(())
    }
}
