//! Where a service's live settings live (its route table, and its policy
//! when that is not a file): a file (locally; `weft up` points every process
//! at one), or a parameter in SSM Parameter Store (in AWS, changed with `aws
//! ssm put-parameter` or `weft route`, no redeploy). The node follows the
//! routes, and the server its policy, with one poller each per process
//! ([`weft_mesh::Live`]).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use weft_mesh::client::route_source::Parse;
use weft_mesh::{FetchError, FileSource, Live, RouteFetch, RoutePolling, Routes, SourceEvents};

/// A live source, from `WEFT_ROUTES` (or `WEFT_POLICY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSetting {
    /// A TOML file.
    File(PathBuf),
    /// An SSM parameter, by name or ARN.
    Ssm(String),
}

impl SourceSetting {
    /// `ssm:NAME` for a parameter; anything else is a file path.
    pub fn parse(setting: &str) -> Result<Self, String> {
        let setting = setting.trim();
        match setting.strip_prefix("ssm:") {
            Some("") => Err("ssm: names no parameter".into()),
            Some(name) => Ok(Self::Ssm(name.to_owned())),
            None if setting.is_empty() => Err("names no file".into()),
            None => Ok(Self::File(PathBuf::from(setting))),
        }
    }
}

impl SourceSetting {
    /// The table's text as stored now (`None`: no table yet).
    pub async fn read(&self) -> Result<Option<String>, FetchError> {
        match self {
            Self::File(path) => FileSource(path.clone()).fetch().await,
            Self::Ssm(name) => SsmParameter::new(name.clone()).fetch().await,
        }
    }

    /// Stores `text` as the table; every process following it applies it
    /// within one poll. A file is replaced whole (written aside, then
    /// renamed), so a reader never sees half of it.
    pub async fn write(&self, text: &str) -> Result<(), String> {
        match self {
            Self::File(path) => {
                let aside = path.with_extension("toml.new");
                tokio::fs::write(&aside, text)
                    .await
                    .map_err(|e| format!("writing {}: {e}", aside.display()))?;
                tokio::fs::rename(&aside, path)
                    .await
                    .map_err(|e| format!("replacing {}: {e}", path.display()))
            }
            Self::Ssm(name) => SsmParameter::new(name.clone()).put(text).await,
        }
    }
}

impl std::fmt::Display for SourceSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Ssm(name) => write!(f, "ssm:{name}"),
        }
    }
}

/// Follows the route table at `setting`, reading it every `every`,
/// counting into `events`.
pub async fn follow(setting: &SourceSetting, every: Duration, events: SourceEvents) -> Routes {
    let polling = RoutePolling {
        every,
        ..RoutePolling::default()
    };
    match setting {
        SourceSetting::File(path) => {
            Routes::follow(FileSource(path.clone()), polling, events).await
        }
        SourceSetting::Ssm(name) => {
            Routes::follow(SsmParameter::new(name.clone()), polling, events).await
        }
    }
}

/// Follows any value at `setting` from `initial` (see [`Live::follow`]).
pub async fn follow_live<T: Send + Sync + 'static>(
    setting: &SourceSetting,
    every: Duration,
    events: SourceEvents,
    initial: T,
    parse: Parse<T>,
) -> Live<T> {
    let polling = RoutePolling {
        every,
        ..RoutePolling::default()
    };
    match setting {
        SourceSetting::File(path) => {
            Live::follow(FileSource(path.clone()), polling, events, initial, parse).await
        }
        SourceSetting::Ssm(name) => {
            Live::follow(
                SsmParameter::new(name.clone()),
                polling,
                events,
                initial,
                parse,
            )
            .await
        }
    }
}

/// A route table in an SSM parameter (String type; a table that outgrows
/// the standard tier's 4 KB needs the advanced tier's 8 KB).
#[derive(Debug)]
pub struct SsmParameter {
    name: String,
    client: tokio::sync::OnceCell<aws_sdk_ssm::Client>,
}

impl SsmParameter {
    /// The parameter `name`, read with the standard AWS configuration
    /// chain (in ECS: the task role, which needs `ssm:GetParameter` on it).
    pub fn new(name: String) -> Self {
        Self {
            name,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// Writes `text` as the parameter's new value (a String parameter,
    /// created if it does not exist).
    pub async fn put(&self, text: &str) -> Result<(), String> {
        self.client()
            .await
            .put_parameter()
            .name(&self.name)
            .value(text)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "writing ssm:{}: {}",
                    self.name,
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                )
            })
    }

    /// The parameter `name`, read with `client` (an endpoint and
    /// credentials of the caller's choosing).
    pub fn with_client(name: String, client: aws_sdk_ssm::Client) -> Self {
        Self {
            name,
            client: tokio::sync::OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> &aws_sdk_ssm::Client {
        self.client
            .get_or_init(|| async { aws_sdk_ssm::Client::new(&crate::aws::config().await) })
            .await
    }
}

impl RouteFetch for SsmParameter {
    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<String>, FetchError>> + Send + '_>> {
        Box::pin(async move {
            let out = self
                .client()
                .await
                .get_parameter()
                .name(&self.name)
                .send()
                .await;
            match out {
                Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_owned)),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_parameter_not_found()) =>
                {
                    Ok(None)
                }
                Err(e) => {
                    let text = aws_sdk_ssm::error::DisplayErrorContext(&e).to_string();
                    let throttled = e.raw_response().is_some_and(|r| r.status().as_u16() == 429)
                        || text.contains("ThrottlingException")
                        || text.contains("TooManyUpdates");
                    Err(if throttled {
                        FetchError::Throttled(text)
                    } else {
                        FetchError::Failed(text)
                    })
                }
            }
        })
    }

    fn describe(&self) -> String {
        format!("ssm:{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_a_parameter_or_a_file() {
        assert_eq!(
            SourceSetting::parse("ssm:/weft/prod/routes"),
            Ok(SourceSetting::Ssm("/weft/prod/routes".into()))
        );
        assert_eq!(
            SourceSetting::parse("/home/me/.weft/routes.toml"),
            Ok(SourceSetting::File("/home/me/.weft/routes.toml".into()))
        );
        assert!(SourceSetting::parse("ssm:").is_err());
        assert!(SourceSetting::parse(" ").is_err());
    }
}
