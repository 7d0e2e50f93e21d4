//! Payments' PostgreSQL store: accounts, authorizations and the double-entry
//! ledger. Every movement of money is a ledger transaction whose entries sum
//! to zero per currency (the database checks it at commit); the accounts'
//! balances move in the same transaction, with the accounts locked in id
//! order so that concurrent movements neither overdraw nor deadlock.

use std::collections::BTreeMap;

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use weft_service::{Db, IdempotencyKey};

use crate::domain::{
    Account, Authorization, AuthorizationStatus, CurrencyTotal, DeclineReason, EntryKind,
    LedgerEntry, Money, NewAccount, PaymentsError,
};

type Result<T> = std::result::Result<T, PaymentsError>;

/// Where payments keeps its idempotency records.
const IDEMPOTENCY_TABLE: &str = "payments.idempotency_keys";

const ACCOUNT_COLUMNS: &str = "account_id, owner, currency_code, balance_minor, held_minor, \
                               credit_limit_minor, create_time";
/// An account as read (`a` is `payments.accounts`): its balance is its row's
/// and its slots' (see migration V4).
const ACCOUNT_READ: &str = "a.account_id, a.owner, a.currency_code, \
     a.balance_minor + coalesce((SELECT sum(s.balance_minor) FROM payments.account_slots s \
     WHERE s.account_id = a.account_id), 0)::bigint, \
     a.held_minor, a.credit_limit_minor, a.create_time";
/// The slots an account's credits are spread over (the table allows 16).
const SLOTS: i16 = 16;
const AUTHORIZATION_COLUMNS: &str = "authorization_id, account_id, reference, amount_minor, \
     currency_code, captured_minor, refunded_minor, status, decline_reason, create_time, \
     update_time, payee_account_id";

/// Payments' handle on its database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Builds a pool over the service's database settings; connections
    /// open lazily.
    pub fn new(config: &weft_service::Config) -> Result<Self> {
        Ok(Self {
            db: Db::new(config)?,
        })
    }

    /// The pool, for the readiness probe.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs `op` under `key` (see [`Db::idempotent`]).
    pub async fn idempotent<T, F>(&self, key: &IdempotencyKey, op: F) -> Result<T>
    where
        T: prost::Message + Default,
        F: AsyncFnOnce(&Tx<'_>) -> Result<T>,
    {
        self.db
            .idempotent(IDEMPOTENCY_TABLE, key, async |tx| op(&Tx(tx)).await)
            .await
    }

    /// One account.
    pub async fn account(&self, account_id: &str) -> Result<Account> {
        let client = self.db.client().await?;
        load_account(&client, account_id, false).await
    }

    /// One authorization.
    pub async fn authorization(&self, authorization_id: &str) -> Result<Authorization> {
        let client = self.db.client().await?;
        Ok(load_authorization(&client, authorization_id, false)
            .await?
            .0)
    }

    /// Ledger entries after `after`, in ledger order; of one account, or of
    /// all when `account_id` is empty.
    pub async fn entries(
        &self,
        account_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LedgerEntry>> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT entry_id, transaction_id, account_id, amount_minor, currency_code, kind, \
                 authorization_id, create_time FROM payments.ledger_entries \
                 WHERE ($1 = '' OR account_id = $1) AND entry_id > $2 \
                 ORDER BY entry_id LIMIT $3",
                &[&account_id, &after, &limit],
            )
            .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// The sum and count of entries per currency.
    pub async fn totals(&self) -> Result<Vec<CurrencyTotal>> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT currency_code, coalesce(sum(amount_minor), 0)::bigint, count(*) \
                 FROM payments.ledger_entries GROUP BY currency_code ORDER BY currency_code",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| CurrencyTotal {
                currency_code: r.get(0),
                sum_minor: r.get(1),
                entry_count: r.get(2),
            })
            .collect())
    }
}

/// One posting of a ledger transaction.
struct Posting<'a> {
    account_id: &'a str,
    hold_book: bool,
    amount_minor: i64,
}

/// A transaction in which an idempotent mutation runs.
pub struct Tx<'a>(&'a Transaction<'a>);

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx")
    }
}

impl Tx<'_> {
    /// Opens a customer account.
    pub async fn open_account(&self, new: &NewAccount) -> Result<Account> {
        let row = self
            .0
            .query_one(
                &format!(
                    "INSERT INTO payments.accounts (owner, currency_code, kind, credit_limit_minor) \
                     VALUES ($1, $2, 'customer', $3) RETURNING {ACCOUNT_COLUMNS}"
                ),
                &[&new.owner, &new.currency_code, &new.credit_limit_minor],
            )
            .await?;
        Ok(account_from_row(&row))
    }

    /// Pays money into an account from the currency's funding account.
    pub async fn deposit(&self, account_id: &str, amount: &Money) -> Result<Account> {
        let account = load_account(self.0, account_id, false).await?;
        same_currency("amount", &amount.currency_code, &account.currency_code)?;
        self.0
            .execute(
                "INSERT INTO payments.accounts (owner, currency_code, kind, credit_limit_minor) \
                 VALUES ('weft:funding', $1, 'funding', 0) \
                 ON CONFLICT (currency_code) WHERE kind = 'funding' DO NOTHING",
                &[&amount.currency_code],
            )
            .await?;
        let funding: String = self
            .0
            .query_one(
                "SELECT account_id FROM payments.accounts \
                 WHERE kind = 'funding' AND currency_code = $1",
                &[&amount.currency_code],
            )
            .await?
            .get(0);
        let a = amount.amount_minor;
        self.post(
            EntryKind::Deposit,
            &amount.currency_code,
            None,
            &[
                Posting {
                    account_id: &funding,
                    hold_book: false,
                    amount_minor: -a,
                },
                Posting {
                    account_id,
                    hold_book: false,
                    amount_minor: a,
                },
            ],
        )
        .await?;
        load_account(self.0, account_id, false).await
    }

    /// Holds `amount` on the payer's account, or records a decline: a
    /// decline is an outcome, not an error, so it is stored under the key.
    pub async fn authorize(
        &self,
        account_id: &str,
        amount: &Money,
        reference: &str,
    ) -> Result<Authorization> {
        let account = load_account(self.0, account_id, true).await?;
        let decline = if account.currency_code != amount.currency_code {
            Some(DeclineReason::CurrencyMismatch)
        } else if account.available_minor() < amount.amount_minor {
            Some(DeclineReason::InsufficientFunds)
        } else {
            None
        };
        let status = match decline {
            Some(_) => AuthorizationStatus::Declined,
            None => AuthorizationStatus::Authorized,
        };
        let row = self
            .0
            .query_one(
                "INSERT INTO payments.authorizations \
                 (account_id, reference, amount_minor, currency_code, status, decline_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING authorization_id",
                &[
                    &account_id,
                    &reference,
                    &amount.amount_minor,
                    &amount.currency_code,
                    &status.as_str(),
                    &decline.map(DeclineReason::as_str),
                ],
            )
            .await?;
        let authorization_id: String = row.get(0);
        if decline.is_none() {
            let a = amount.amount_minor;
            self.post(
                EntryKind::Hold,
                &amount.currency_code,
                Some(&authorization_id),
                &[
                    Posting {
                        account_id,
                        hold_book: false,
                        amount_minor: -a,
                    },
                    Posting {
                        account_id,
                        hold_book: true,
                        amount_minor: a,
                    },
                ],
            )
            .await?;
        }
        Ok(load_authorization(self.0, &authorization_id, false)
            .await?
            .0)
    }

    /// Pays the held money to `payee`. Capturing a captured authorization to
    /// the same payee succeeds without change.
    pub async fn capture(&self, authorization_id: &str, payee: &str) -> Result<Authorization> {
        let (auth, captured_to) = load_authorization(self.0, authorization_id, true).await?;
        match auth.status {
            AuthorizationStatus::Captured if captured_to.as_deref() == Some(payee) => {
                return Ok(auth);
            }
            AuthorizationStatus::Captured => {
                return Err(PaymentsError::OtherPayee(authorization_id.into()));
            }
            AuthorizationStatus::Authorized => {}
            other => return Err(invalid_state(authorization_id, other, "capture")),
        }
        let payee_account = load_account(self.0, payee, false)
            .await
            .map_err(|e| match e {
                PaymentsError::NotFound { id, .. } => PaymentsError::NotFound {
                    kind: "payee account",
                    id,
                },
                e => e,
            })?;
        same_currency(
            "payee account",
            &payee_account.currency_code,
            &auth.amount.currency_code,
        )?;
        let a = auth.amount.amount_minor;
        self.post(
            EntryKind::Capture,
            &auth.amount.currency_code,
            Some(authorization_id),
            &[
                Posting {
                    account_id: &auth.account_id,
                    hold_book: true,
                    amount_minor: -a,
                },
                Posting {
                    account_id: payee,
                    hold_book: false,
                    amount_minor: a,
                },
            ],
        )
        .await?;
        self.0
            .execute(
                "UPDATE payments.authorizations SET status = 'CAPTURED', captured_minor = amount_minor, \
                 payee_account_id = $2, update_time = now() WHERE authorization_id = $1",
                &[&authorization_id, &payee],
            )
            .await?;
        Ok(load_authorization(self.0, authorization_id, false).await?.0)
    }

    /// Lifts the hold. Voiding a voided authorization succeeds without change.
    pub async fn void(&self, authorization_id: &str) -> Result<Authorization> {
        let (auth, _) = load_authorization(self.0, authorization_id, true).await?;
        match auth.status {
            AuthorizationStatus::Voided => return Ok(auth),
            AuthorizationStatus::Authorized => {}
            other => return Err(invalid_state(authorization_id, other, "void")),
        }
        let a = auth.amount.amount_minor;
        self.post(
            EntryKind::Void,
            &auth.amount.currency_code,
            Some(authorization_id),
            &[
                Posting {
                    account_id: &auth.account_id,
                    hold_book: true,
                    amount_minor: -a,
                },
                Posting {
                    account_id: &auth.account_id,
                    hold_book: false,
                    amount_minor: a,
                },
            ],
        )
        .await?;
        self.0
            .execute(
                "UPDATE payments.authorizations SET status = 'VOIDED', update_time = now() \
                 WHERE authorization_id = $1",
                &[&authorization_id],
            )
            .await?;
        Ok(load_authorization(self.0, authorization_id, false).await?.0)
    }

    /// Gives captured money back from the payee to the payer.
    pub async fn refund(&self, authorization_id: &str, amount: &Money) -> Result<Authorization> {
        let (auth, captured_to) = load_authorization(self.0, authorization_id, true).await?;
        let payee = match (auth.status, captured_to) {
            (AuthorizationStatus::Captured, Some(payee)) => payee,
            (other, _) => return Err(invalid_state(authorization_id, other, "refund")),
        };
        same_currency("amount", &amount.currency_code, &auth.amount.currency_code)?;
        let refundable = auth.captured_minor - auth.refunded_minor;
        if amount.amount_minor > refundable {
            return Err(PaymentsError::RefundTooLarge {
                requested: amount.amount_minor,
                refundable,
            });
        }
        // Not locked here: the balance update below locks the accounts in id
        // order, and the database's limit check there is what holds; this
        // check only gives the common case a clear answer without a write.
        let payee_account = load_account(self.0, &payee, false).await?;
        if payee_account.available_minor() < amount.amount_minor {
            return Err(PaymentsError::InsufficientFunds(payee));
        }
        let a = amount.amount_minor;
        self.post(
            EntryKind::Refund,
            &amount.currency_code,
            Some(authorization_id),
            &[
                Posting {
                    account_id: &payee,
                    hold_book: false,
                    amount_minor: -a,
                },
                Posting {
                    account_id: &auth.account_id,
                    hold_book: false,
                    amount_minor: a,
                },
            ],
        )
        .await?;
        self.0
            .execute(
                "UPDATE payments.authorizations SET refunded_minor = refunded_minor + $2, \
                 update_time = now() WHERE authorization_id = $1",
                &[&authorization_id, &a],
            )
            .await?;
        Ok(load_authorization(self.0, authorization_id, false).await?.0)
    }

    /// Writes one balanced ledger transaction and moves the balances of the
    /// accounts it touches, locking them in id order.
    async fn post(
        &self,
        kind: EntryKind,
        currency_code: &str,
        authorization_id: Option<&str>,
        postings: &[Posting<'_>],
    ) -> Result<()> {
        let sum = postings
            .iter()
            .try_fold(0i64, |s, p| s.checked_add(p.amount_minor))
            .ok_or(PaymentsError::Overflow)?;
        if sum != 0 {
            return Err(PaymentsError::Db(weft_service::DbError::Internal(format!(
                "unbalanced {} transaction",
                kind.as_str()
            ))));
        }
        // (balance delta, held delta) per account, in id order.
        let mut deltas: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for p in postings {
            let d = deltas.entry(p.account_id).or_default();
            d.0 =
                d.0.checked_add(p.amount_minor)
                    .ok_or(PaymentsError::Overflow)?;
            if p.hold_book {
                d.1 =
                    d.1.checked_add(p.amount_minor)
                        .ok_or(PaymentsError::Overflow)?;
            }
        }
        for (account_id, (balance, held)) in &deltas {
            if *held == 0 && *balance > 0 {
                // Money in: into one of the account's slots, so that credits
                // to one account (a merchant's captures) do not wait for each
                // other's commits on its row.
                let slot = fastrand::i16(0..SLOTS);
                self.0
                    .execute(
                        "INSERT INTO payments.account_slots (account_id, slot, balance_minor) \
                         VALUES ($1, $2, $3) ON CONFLICT (account_id, slot) DO UPDATE \
                         SET balance_minor = account_slots.balance_minor + EXCLUDED.balance_minor",
                        &[account_id, &slot, balance],
                    )
                    .await
                    .map_err(|e| missing_account(e, account_id))?;
                continue;
            }
            // Money out or held: the row first (the lock order every path
            // keeps), then its slots folded into it, so the row's limit check
            // sees the whole balance.
            lock_account(self.0, account_id).await?;
            self.0
                .execute(
                    "WITH folded AS (DELETE FROM payments.account_slots WHERE account_id = $1 \
                     RETURNING balance_minor) \
                     UPDATE payments.accounts SET balance_minor = balance_minor + $2 \
                     + coalesce((SELECT sum(balance_minor) FROM folded), 0)::bigint, \
                     held_minor = held_minor + $3 WHERE account_id = $1",
                    &[account_id, balance, held],
                )
                .await
                .map_err(|e| limit_violation(e, account_id))?;
        }
        // All legs in one statement, under one new transaction id.
        let accounts: Vec<&str> = postings.iter().map(|p| p.account_id).collect();
        let books: Vec<&str> = postings
            .iter()
            .map(|p| if p.hold_book { "hold" } else { "main" })
            .collect();
        let amounts: Vec<i64> = postings.iter().map(|p| p.amount_minor).collect();
        self.0
            .execute(
                "INSERT INTO payments.ledger_entries (transaction_id, account_id, book, \
                 amount_minor, currency_code, kind, authorization_id) \
                 SELECT t.id, p.account_id, p.book, p.amount_minor, $4, $5, $6 \
                 FROM (SELECT gen_random_uuid()::text AS id) t, \
                 unnest($1::text[], $2::text[], $3::bigint[]) \
                 WITH ORDINALITY AS p(account_id, book, amount_minor, n) ORDER BY p.n",
                &[
                    &accounts,
                    &books,
                    &amounts,
                    &currency_code,
                    &kind.as_str(),
                    &authorization_id,
                ],
            )
            .await?;
        Ok(())
    }
}

/// A credit to an account that does not exist (the slot's reference to it
/// fails) is the account not found.
fn missing_account(e: tokio_postgres::Error, account_id: &str) -> PaymentsError {
    if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) {
        return not_found("account", account_id);
    }
    e.into()
}

/// The database's limit check is the last line of defence; the code checks
/// first, so reaching it means a race the locks should have prevented.
fn limit_violation(e: tokio_postgres::Error, account_id: &str) -> PaymentsError {
    if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) {
        PaymentsError::InsufficientFunds(account_id.into())
    } else {
        e.into()
    }
}

fn same_currency(what: &'static str, found: &str, expected: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(PaymentsError::CurrencyMismatch {
        what,
        found: found.into(),
        expected: expected.into(),
    })
}

fn invalid_state(id: &str, status: AuthorizationStatus, action: &'static str) -> PaymentsError {
    PaymentsError::InvalidState {
        authorization_id: id.into(),
        status: status.as_str(),
        action,
    }
}

fn not_found(kind: &'static str, id: &str) -> PaymentsError {
    PaymentsError::NotFound {
        kind,
        id: id.into(),
    }
}

/// Locks an account's row for the rest of the transaction (NO KEY, so a
/// credit's reference check into a new slot does not wait for it).
async fn lock_account<C: GenericClient>(client: &C, account_id: &str) -> Result<()> {
    let locked = client
        .execute(
            "SELECT 1 FROM payments.accounts WHERE account_id = $1 FOR NO KEY UPDATE",
            &[&account_id],
        )
        .await?;
    if locked != 1 {
        return Err(not_found("account", account_id));
    }
    Ok(())
}

async fn load_account<C: GenericClient>(
    client: &C,
    account_id: &str,
    for_update: bool,
) -> Result<Account> {
    if for_update {
        // The lock first, the read after it in a statement of its own: a
        // read that waited for the lock would see the row as it is now but
        // the slots as they were when it began, and count money a fold
        // moved between them twice. Once the row is held nothing folds, and
        // slots only grow.
        lock_account(client, account_id).await?;
    }
    let row = client
        .query_opt(
            &format!("SELECT {ACCOUNT_READ} FROM payments.accounts a WHERE a.account_id = $1"),
            &[&account_id],
        )
        .await?
        .ok_or_else(|| not_found("account", account_id))?;
    Ok(account_from_row(&row))
}

/// An authorization and the payee it was captured to.
async fn load_authorization<C: GenericClient>(
    client: &C,
    authorization_id: &str,
    for_update: bool,
) -> Result<(Authorization, Option<String>)> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = client
        .query_opt(
            &format!(
                "SELECT {AUTHORIZATION_COLUMNS} FROM payments.authorizations \
                 WHERE authorization_id = $1{lock}"
            ),
            &[&authorization_id],
        )
        .await?
        .ok_or_else(|| not_found("authorization", authorization_id))?;
    let internal = |what: String| PaymentsError::Db(weft_service::DbError::Internal(what));
    let status: &str = row.get(7);
    let status = AuthorizationStatus::parse(status)
        .ok_or_else(|| internal(format!("unknown authorization status {status}")))?;
    let decline_reason = match row.get::<_, Option<&str>>(8) {
        None => None,
        Some(r) => {
            Some(DeclineReason::parse(r).ok_or_else(|| internal(format!("unknown reason {r}")))?)
        }
    };
    Ok((
        Authorization {
            authorization_id: row.get(0),
            account_id: row.get(1),
            reference: row.get(2),
            amount: Money::new(row.get(3), row.get::<_, String>(4)),
            captured_minor: row.get(5),
            refunded_minor: row.get(6),
            status,
            decline_reason,
            create_time: row.get(9),
            update_time: row.get(10),
        },
        row.get(11),
    ))
}

fn account_from_row(row: &Row) -> Account {
    Account {
        account_id: row.get(0),
        owner: row.get(1),
        currency_code: row.get(2),
        balance_minor: row.get(3),
        held_minor: row.get(4),
        credit_limit_minor: row.get(5),
        create_time: row.get(6),
    }
}

fn entry_from_row(row: &Row) -> Result<LedgerEntry> {
    let kind: &str = row.get(5);
    let kind = EntryKind::parse(kind).ok_or_else(|| {
        PaymentsError::Db(weft_service::DbError::Internal(format!(
            "unknown entry kind {kind}"
        )))
    })?;
    Ok(LedgerEntry {
        entry_id: row.get(0),
        transaction_id: row.get(1),
        account_id: row.get(2),
        amount: Money::new(row.get(3), row.get::<_, String>(4)),
        kind,
        authorization_id: row.get(6),
        create_time: row.get(7),
    })
}
