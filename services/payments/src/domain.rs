//! Payments' domain values and errors, free of transport types: the gRPC edge
//! converts protos into these and these errors into statuses.

use std::time::SystemTime;

use weft_service::DbError;
pub use weft_service::Money;

/// An account and its figures, all in the account's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Assigned id.
    pub account_id: String,
    /// Who owns it.
    pub owner: String,
    /// ISO 4217 code of every amount on it.
    pub currency_code: String,
    /// Sum of its ledger entries.
    pub balance_minor: i64,
    /// Held by open authorizations.
    pub held_minor: i64,
    /// How far below zero it may go.
    pub credit_limit_minor: i64,
    /// When it was opened.
    pub create_time: SystemTime,
}

impl Account {
    /// What can still be authorized: balance - held + credit limit.
    pub fn available_minor(&self) -> i64 {
        self.balance_minor
            .saturating_sub(self.held_minor)
            .saturating_add(self.credit_limit_minor)
    }
}

/// An account to open.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Who owns it.
    pub owner: String,
    /// Its currency.
    pub currency_code: String,
    /// How far below zero it may go.
    pub credit_limit_minor: i64,
}

/// The state of an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationStatus {
    /// Money is held.
    Authorized,
    /// Nothing was held; see the decline reason.
    Declined,
    /// The held money went to the payee.
    Captured,
    /// The hold was lifted.
    Voided,
}

impl AuthorizationStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "AUTHORIZED",
            Self::Declined => "DECLINED",
            Self::Captured => "CAPTURED",
            Self::Voided => "VOIDED",
        }
    }

    /// Parses the name stored in the database.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "AUTHORIZED" => Self::Authorized,
            "DECLINED" => Self::Declined,
            "CAPTURED" => Self::Captured,
            "VOIDED" => Self::Voided,
            _ => return None,
        })
    }
}

/// Why an authorization was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineReason {
    /// The account's available money is less than the amount.
    InsufficientFunds,
    /// The amount is in another currency than the account.
    CurrencyMismatch,
}

impl DeclineReason {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
        }
    }

    /// Parses the name stored in the database.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "INSUFFICIENT_FUNDS" => Self::InsufficientFunds,
            "CURRENCY_MISMATCH" => Self::CurrencyMismatch,
            _ => return None,
        })
    }
}

/// A hold on a payer's money, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Assigned id.
    pub authorization_id: String,
    /// The payer.
    pub account_id: String,
    /// The caller's reference (an order id, say).
    pub reference: String,
    /// The amount asked for.
    pub amount: Money,
    /// Captured so far.
    pub captured_minor: i64,
    /// Refunded so far.
    pub refunded_minor: i64,
    /// Current state.
    pub status: AuthorizationStatus,
    /// Set when declined.
    pub decline_reason: Option<DeclineReason>,
    /// When it was made.
    pub create_time: SystemTime,
    /// When it last changed.
    pub update_time: SystemTime,
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Money paid in.
    Deposit,
    /// Money held for an authorization.
    Hold,
    /// Held money paid to the payee.
    Capture,
    /// A hold lifted.
    Void,
    /// Captured money given back.
    Refund,
}

impl EntryKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "DEPOSIT",
            Self::Hold => "HOLD",
            Self::Capture => "CAPTURE",
            Self::Void => "VOID",
            Self::Refund => "REFUND",
        }
    }

    /// Parses the name stored in the database.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "DEPOSIT" => Self::Deposit,
            "HOLD" => Self::Hold,
            "CAPTURE" => Self::Capture,
            "VOID" => Self::Void,
            "REFUND" => Self::Refund,
            _ => return None,
        })
    }
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Position in the ledger.
    pub entry_id: i64,
    /// The transaction it belongs to; its entries sum to zero.
    pub transaction_id: String,
    /// The account it moves.
    pub account_id: String,
    /// Signed amount.
    pub amount: Money,
    /// What it records.
    pub kind: EntryKind,
    /// The authorization it belongs to, if any.
    pub authorization_id: Option<String>,
    /// When it was written.
    pub create_time: SystemTime,
}

/// One currency's line in the ledger totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyTotal {
    /// ISO 4217 code.
    pub currency_code: String,
    /// Sum of every entry: zero in a sound ledger.
    pub sum_minor: i64,
    /// How many entries there are.
    pub entry_count: i64,
}

/// What can go wrong in payments, as the domain sees it.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// A named thing does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// The id the caller gave.
        id: String,
    },
    /// The authorization is in a state the action cannot start from.
    #[error("authorization {authorization_id:?} is {status}, cannot {action}")]
    InvalidState {
        /// The authorization.
        authorization_id: String,
        /// Its state.
        status: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// Two amounts or accounts are in different currencies.
    #[error("{what} is in {found}, expected {expected}")]
    CurrencyMismatch {
        /// Which amount or account.
        what: &'static str,
        /// Its currency.
        found: String,
        /// The currency required.
        expected: String,
    },
    /// A capture already went to another payee.
    #[error("authorization {0:?} was captured to another payee")]
    OtherPayee(String),
    /// A refund exceeds what is left to refund.
    #[error("refund of {requested} exceeds the {refundable} left to refund")]
    RefundTooLarge {
        /// Asked for.
        requested: i64,
        /// Captured minus refunded.
        refundable: i64,
    },
    /// The account that would pay cannot go that far below zero.
    #[error("account {0:?} cannot pay that much")]
    InsufficientFunds(String),
    /// An amount would not fit the ledger's integers.
    #[error("amount too large")]
    Overflow,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for PaymentsError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}
