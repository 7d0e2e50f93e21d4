//! A service's handle on PostgreSQL: a connection pool, the sorting of
//! database errors into what a caller can act on, and the idempotency
//! protocol every keyed mutation runs under.

use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tonic::Status;

use crate::keyed::IdempotencyKey;

/// What went wrong with the database, sorted by what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached in time; try again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Two transactions collided; the call may be retried.
    #[error("concurrent update: {0}")]
    Conflict(String),
    /// The idempotency key was used before with a different request.
    #[error("idempotency_key was already used with a different request")]
    IdempotencyConflict,
    /// A sum or counter would pass what a column holds (PostgreSQL's
    /// `numeric_value_out_of_range`): the caller's amounts are too large for
    /// the record they add to, not a fault of the service.
    #[error("an amount or balance would exceed the largest value that can be kept")]
    OutOfRange(String),
    /// Anything else; details belong in logs, never in responses.
    #[error("database error: {0}")]
    Internal(String),
    /// A keyed call's refusal, answered again from its idempotency record:
    /// the code and message the first answer carried.
    #[error("{message}")]
    Refused {
        /// The first answer's code.
        code: tonic::Code,
        /// The first answer's message (it was shown to the caller then).
        message: String,
    },
}

/// What a keyed call's error means for its key. A lasting refusal (the
/// request is refused, and would be again: not found, out of stock, a state
/// the action cannot start from) is recorded under the key like a response,
/// so every later use of the key, however late it arrives, gets the same
/// answer: a retry that was still in flight when the caller acted on the
/// refusal can no longer succeed behind its back. A failure that may pass
/// (unavailable, a collision, an internal fault) records nothing, and the
/// key stays free for the retry.
pub trait Refusal {
    /// The code and message to record and answer again, for a lasting
    /// refusal; `None` for a failure that may pass.
    fn refusal(&self) -> Option<(tonic::Code, String)>;
}

impl Refusal for DbError {
    fn refusal(&self) -> Option<(tonic::Code, String)> {
        match self {
            Self::OutOfRange(_) => Some((tonic::Code::OutOfRange, self.to_string())),
            Self::Refused { code, message } => Some((*code, message.clone())),
            Self::Unavailable(_)
            | Self::Conflict(_)
            | Self::IdempotencyConflict
            | Self::Internal(_) => None,
        }
    }
}

impl DbError {
    /// The status a caller of `service` sees: the detail is logged here and
    /// never returned.
    pub fn to_status(&self, service: &str) -> Status {
        match self {
            Self::IdempotencyConflict => Status::failed_precondition(self.to_string()),
            Self::Conflict(detail) => {
                tracing::info!(%detail, "transaction collided");
                Status::aborted("concurrent update; retry the call")
            }
            Self::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Status::unavailable(format!("{service} is temporarily unavailable"))
            }
            Self::OutOfRange(detail) => {
                tracing::info!(%detail, "value out of range");
                Status::out_of_range(self.to_string())
            }
            Self::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
            Self::Refused { code, message } => Status::new(*code, message.clone()),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        match e.code() {
            Some(code)
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                Self::Conflict(e.to_string())
            }
            Some(code)
                if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CANNOT_CONNECT_NOW =>
            {
                Self::Unavailable(e.to_string())
            }
            Some(code) if *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE => {
                Self::OutOfRange(e.to_string())
            }
            Some(_) => Self::Internal(e.to_string()),
            None if e.is_closed() => Self::Unavailable(e.to_string()),
            None => Self::Internal(e.to_string()),
        }
    }
}

/// A pool of connections to one database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Db {
    /// Builds a pool over the service's database settings (TLS when a CA
    /// bundle is configured); connections open lazily. A call waits at most
    /// `db_timeout` for a connection.
    pub fn new(config: &crate::Config) -> Result<Self, DbError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let database = config.database.clone();
        let manager = match (&config.database_password, &config.database_tls) {
            // A password that may rotate: each new connection finds the current one.
            (Some(source), tls) => Manager::from_connect(
                database,
                crate::db_password::RotatingConnect::new(tls.clone(), source.clone()),
                manager_config,
            ),
            (None, Some(tls)) => Manager::from_config(database, tls.clone(), manager_config),
            (None, None) => Manager::from_config(database, NoTls, manager_config),
        };
        let wait_timeout = config.db_timeout;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(wait_timeout))
            .create_timeout(Some(wait_timeout))
            .recycle_timeout(Some(wait_timeout))
            .build()
            .map_err(|e| DbError::Internal(format!("building the pool: {e}")))?;
        Ok(Self { pool })
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<Object, DbError> {
        self.pool
            .get()
            .await
            .map_err(|e| DbError::Unavailable(e.to_string()))
    }

    /// The pool's state: size, idle connections, waiting calls.
    pub fn status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// Answers when the database does: the readiness probe behind health.
    pub async fn ping(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Runs `op` in a transaction guarded by `key`, whose record lives in
    /// `table` (`schema.idempotency_keys`, keyed by `caller`, `method` and
    /// `idempotency_key`, with `fingerprint`, and `response` or
    /// `refusal_code` and `refusal_message`): the first call with a key runs
    /// `op` and stores its response in the same transaction as its effect;
    /// later calls by the same caller to the same method with the same key
    /// and fingerprint get that response back without running `op`; with
    /// another fingerprint they fail with [`DbError::IdempotencyConflict`].
    /// Another caller's key, or the same key on another method, is another
    /// record.
    ///
    /// A lasting refusal from `op` (see [`Refusal`]) is recorded too, in a
    /// transaction of its own after `op`'s effects are rolled back, and
    /// answered again to later calls with the key; it is only returned once
    /// recorded (if recording fails the caller sees the database as
    /// unavailable and retries). If a concurrent call with the key claims
    /// it in between, its recorded answer is the answer. A failure that may
    /// pass stores nothing, so the key can be used again.
    ///
    /// Records from before keys were scoped (caller and method empty) still
    /// answer a true retry (same key and fingerprint, which covers the
    /// method) until the sweeper ages them out; they block nobody.
    pub async fn idempotent<T, E, F>(
        &self,
        table: &'static str,
        key: &IdempotencyKey,
        op: F,
    ) -> Result<T, E>
    where
        T: prost::Message + Default,
        E: From<DbError> + Refusal,
        F: AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let legacy = tx
            .query_opt(
                &format!(
                    "SELECT response FROM {table} WHERE caller = '' AND method = '' \
                     AND idempotency_key = $1 AND fingerprint = $2 AND response IS NOT NULL"
                ),
                &[&key.key, &key.fingerprint],
            )
            .await
            .map_err(DbError::from)?;
        if let Some(row) = legacy {
            let response: Vec<u8> = row.get(0);
            return decode(&response).map_err(E::from);
        }
        if !claim(&tx, table, key, None).await? {
            return Ok(replay(&tx, table, key).await?);
        }
        let refused = match op(&tx).await {
            Ok(response) => {
                tx.execute(
                    &format!(
                        "UPDATE {table} SET response = $4 \
                         WHERE caller = $1 AND method = $2 AND idempotency_key = $3"
                    ),
                    &[
                        &key.caller,
                        &key.method,
                        &key.key,
                        &response.encode_to_vec(),
                    ],
                )
                .await
                .map_err(DbError::from)?;
                tx.commit().await.map_err(DbError::from)?;
                return Ok(response);
            }
            Err(e) => match e.refusal() {
                Some(refusal) => (e, refusal),
                None => return Err(e),
            },
        };
        // The refusal's partial effects go; the refusal itself is recorded.
        let (error, refusal) = refused;
        tx.rollback().await.map_err(DbError::from)?;
        let recorded = async {
            let tx = client.transaction().await?;
            if !claim(&tx, table, key, Some(&refusal)).await? {
                // A concurrent call with the key got there first: its answer
                // is the key's answer.
                let answer = replay(&tx, table, key).await;
                tx.commit().await?;
                return Ok::<_, DbError>(Some(answer));
            }
            tx.commit().await?;
            Ok(None)
        };
        match recorded.await {
            Ok(None) => Err(error),
            Ok(Some(answer)) => Ok(answer?),
            Err(e) => {
                tracing::warn!(error = %e, "recording a refusal under its idempotency key failed");
                Err(DbError::Unavailable(format!("recording a refusal: {e}")).into())
            }
        }
    }

    /// Deletes idempotency records in `table` older than `retention`, a
    /// batch at a time (short transactions, no long lock); returns how many.
    pub async fn sweep_idempotency(
        &self,
        table: &'static str,
        retention: std::time::Duration,
    ) -> Result<u64, DbError> {
        let client = self.client().await?;
        let seconds = retention.as_secs_f64();
        let mut swept = 0;
        loop {
            let n = client
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} \
                         WHERE create_time < now() - $1::float8 * interval '1 second' LIMIT 1000)"
                    ),
                    &[&seconds],
                )
                .await?;
            swept += n;
            if n < 1000 {
                return Ok(swept);
            }
        }
    }
}

/// Inserts `key`'s record into `table` (with a refusal as its answer, or
/// none yet); false if the key has a record already. The insert blocks on a
/// concurrent holder of the same key until it commits or rolls back, so two
/// racing calls cannot both run.
async fn claim(
    tx: &Transaction<'_>,
    table: &'static str,
    key: &IdempotencyKey,
    refusal: Option<&(tonic::Code, String)>,
) -> Result<bool, DbError> {
    let code = refusal.map(|(code, _)| *code as i32);
    let message = refusal.map(|(_, message)| message.as_str());
    let claimed = tx
        .execute(
            &format!(
                "INSERT INTO {table} \
                 (caller, method, idempotency_key, fingerprint, refusal_code, refusal_message) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (caller, method, idempotency_key) DO NOTHING"
            ),
            &[
                &key.caller,
                &key.method,
                &key.key,
                &key.fingerprint,
                &code,
                &message,
            ],
        )
        .await?;
    Ok(claimed == 1)
}

/// The answer recorded under `key`: its response, or its refusal as
/// [`DbError::Refused`]; [`DbError::IdempotencyConflict`] if the key was used
/// with another request.
async fn replay<T: prost::Message + Default>(
    tx: &Transaction<'_>,
    table: &'static str,
    key: &IdempotencyKey,
) -> Result<T, DbError> {
    let row = tx
        .query_one(
            &format!(
                "SELECT fingerprint, response, refusal_code, refusal_message FROM {table} \
                 WHERE caller = $1 AND method = $2 AND idempotency_key = $3"
            ),
            &[&key.caller, &key.method, &key.key],
        )
        .await?;
    let fingerprint: Vec<u8> = row.get(0);
    if fingerprint != key.fingerprint {
        return Err(DbError::IdempotencyConflict);
    }
    let response: Option<Vec<u8>> = row.get(1);
    let code: Option<i32> = row.get(2);
    match (response, code) {
        (Some(response), _) => decode(&response),
        (None, Some(code)) => Err(DbError::Refused {
            code: tonic::Code::from_i32(code),
            message: row.get::<_, Option<String>>(3).unwrap_or_default(),
        }),
        (None, None) => Err(DbError::Internal(
            "idempotency record without an answer".into(),
        )),
    }
}

fn decode<T: prost::Message + Default>(response: &[u8]) -> Result<T, DbError> {
    T::decode(response).map_err(|e| DbError::Internal(format!("stored response: {e}")))
}

/// Sweeps `table` every hour (with jitter) for as long as the returned
/// handle lives: idempotency records older than `retention`, the replay
/// window, are deleted. Every replica sweeps; deletes of the same rows do
/// not conflict.
pub fn spawn_sweeper(
    db: Db,
    table: &'static str,
    retention: std::time::Duration,
) -> crate::AbortOnDrop {
    crate::AbortOnDrop(tokio::spawn(async move {
        loop {
            match db.sweep_idempotency(table, retention).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(swept = n, %table, "idempotency records past the replay window deleted")
                }
                Err(e) => {
                    tracing::warn!(error = %e, %table, "sweeping idempotency records failed; trying again later")
                }
            }
            let hour = std::time::Duration::from_secs(3600);
            tokio::time::sleep(weft_discovery::backoff::jittered(hour, 0.1)).await;
        }
    }))
}
