//! A database password that may change under a running service. The pool
//! opens each new connection with the password that worked last; when the
//! server refuses it (the password was rotated), the connection asks the
//! secret again, the current version first and then a version being rotated
//! in, and keeps whichever the server takes. A rotation therefore costs no
//! call: connections already open carry on, and new ones find the new
//! password on their first refusal.
//!
//! Secrets Manager's single-user rotation sets the new password in the
//! database (version AWSPENDING) before it makes that version AWSCURRENT;
//! trying both covers the moment between.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use deadpool_postgres::Connect;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::pg_tls::PgTls;

/// A future that borrows its source, as the pool's connector wants it.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the password comes from; asked again whenever the server refuses
/// the one in use.
pub trait PasswordSource: Send + Sync + std::fmt::Debug {
    /// The passwords to try, most likely first; an error says why none
    /// could be read.
    fn candidates(&self) -> Boxed<'_, Result<Vec<String>, String>>;
}

/// The password in a Secrets Manager secret's JSON key `password` (as RDS
/// and the deployment's generated secrets keep it).
#[derive(Debug)]
pub struct SecretsManagerPassword {
    secret_id: String,
    client: tokio::sync::OnceCell<aws_sdk_secretsmanager::Client>,
}

impl SecretsManagerPassword {
    /// The password of secret `secret_id` (a name or ARN), read with the
    /// standard AWS configuration chain (in ECS: the task role).
    pub fn new(secret_id: impl Into<String>) -> Self {
        Self {
            secret_id: secret_id.into(),
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_secretsmanager::Client {
        self.client
            .get_or_init(|| async {
                aws_sdk_secretsmanager::Client::new(&crate::aws::config().await)
            })
            .await
    }

    async fn version(&self, stage: &str) -> Result<Option<String>, String> {
        let out = self
            .client()
            .await
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage(stage)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // No version in that stage (no rotation under way).
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(format!(
                    "reading {} ({stage}): {}",
                    self.secret_id,
                    aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                ));
            }
        };
        let text = out.secret_string().unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("{} ({stage}) is not JSON: {e}", self.secret_id))?;
        Ok(value
            .get("password")
            .and_then(|p| p.as_str())
            .map(str::to_owned))
    }
}

impl PasswordSource for SecretsManagerPassword {
    fn candidates(&self) -> Boxed<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let current = self.version("AWSCURRENT").await?;
            let pending = self.version("AWSPENDING").await.unwrap_or_default();
            let mut out: Vec<String> = current.into_iter().collect();
            if let Some(p) = pending
                && !out.contains(&p)
            {
                out.push(p);
            }
            if out.is_empty() {
                return Err(format!("{} holds no password", self.secret_id));
            }
            Ok(out)
        })
    }
}

/// Opens the pool's connections with the password that worked last, and
/// asks the source again when the server refuses it.
#[derive(Debug)]
pub struct RotatingConnect {
    tls: Option<PgTls>,
    source: Arc<dyn PasswordSource>,
    last_good: RwLock<Option<String>>,
}

impl RotatingConnect {
    /// Connections over `tls` (or without) with passwords from `source`.
    pub fn new(tls: Option<PgTls>, source: Arc<dyn PasswordSource>) -> Self {
        Self {
            tls,
            source,
            last_good: RwLock::new(None),
        }
    }

    async fn attempt(
        &self,
        config: &tokio_postgres::Config,
        password: &str,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let mut config = config.clone();
        config.password(password);
        crate::pg_tls::connect(&config, self.tls.as_ref()).await
    }

    fn remember(&self, password: &str) {
        if let Ok(mut last) = self.last_good.write() {
            *last = Some(password.to_owned());
        }
    }
}

/// The server refused the credentials (not: could not be reached).
fn refused(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    )
}

impl Connect for RotatingConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Boxed<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let config = config.clone();
        Box::pin(async move {
            let known = self.last_good.read().ok().and_then(|g| g.clone());
            let mut refusal = None;
            if let Some(password) = &known {
                match self.attempt(&config, password).await {
                    Ok(pair) => return Ok(pair),
                    Err(e) if refused(&e) => {
                        tracing::info!(
                            "the database refused the password in use; reading it again"
                        );
                        refusal = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            let candidates = match self.source.candidates().await {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(error = %why, "cannot read the database password");
                    Vec::new()
                }
            };
            for password in candidates.iter().filter(|p| Some(*p) != known.as_ref()) {
                match self.attempt(&config, password).await {
                    Ok(pair) => {
                        self.remember(password);
                        return Ok(pair);
                    }
                    Err(e) if refused(&e) => refusal = Some(e),
                    Err(e) => return Err(e),
                }
            }
            match refusal {
                Some(e) => Err(e),
                // Nothing to try: the server's own answer to no password.
                None => self.attempt(&config, "").await,
            }
        })
    }
}
