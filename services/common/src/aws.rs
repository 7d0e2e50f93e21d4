//! The AWS SDK configuration every client of a service process shares: the
//! standard chain (in ECS the task role), with connect and operation
//! timeouts so a call to an AWS service that does not answer fails within
//! seconds instead of holding a poller or a pool.

use std::time::Duration;

/// Loads the shared configuration.
pub async fn config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}
