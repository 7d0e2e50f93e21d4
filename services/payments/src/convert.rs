//! Conversions from payments' domain values to their Protobuf messages, and
//! from domain errors to gRPC statuses that reveal no internal detail.

use std::time::SystemTime;

use tonic::{Code, Status};
use weft_proto::payments::v1 as pb;
use weft_service::db::Refusal;

use crate::domain::{
    Account, Authorization, AuthorizationStatus, CurrencyTotal, DeclineReason, EntryKind,
    LedgerEntry, Money, PaymentsError,
};

fn timestamp(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(t))
}

fn money(amount_minor: i64, currency_code: &str) -> Option<weft_proto::money::v1::Money> {
    Some(Money::new(amount_minor, currency_code).to_pb())
}

/// An account to its message.
pub fn account(a: &Account) -> pb::Account {
    let c = a.currency_code.as_str();
    pb::Account {
        account_id: a.account_id.clone(),
        owner: a.owner.clone(),
        currency_code: a.currency_code.clone(),
        balance: money(a.balance_minor, c),
        held: money(a.held_minor, c),
        available: money(a.available_minor(), c),
        credit_limit: money(a.credit_limit_minor, c),
        create_time: timestamp(a.create_time),
    }
}

/// An authorization to its message.
pub fn authorization(a: &Authorization) -> pb::Authorization {
    let c = a.amount.currency_code.as_str();
    pb::Authorization {
        authorization_id: a.authorization_id.clone(),
        account_id: a.account_id.clone(),
        reference: a.reference.clone(),
        amount: Some(a.amount.to_pb()),
        captured: money(a.captured_minor, c),
        refunded: money(a.refunded_minor, c),
        status: match a.status {
            AuthorizationStatus::Authorized => pb::AuthorizationStatus::Authorized,
            AuthorizationStatus::Declined => pb::AuthorizationStatus::Declined,
            AuthorizationStatus::Captured => pb::AuthorizationStatus::Captured,
            AuthorizationStatus::Voided => pb::AuthorizationStatus::Voided,
        } as i32,
        decline_reason: match a.decline_reason {
            None => pb::DeclineReason::Unspecified,
            Some(DeclineReason::InsufficientFunds) => pb::DeclineReason::InsufficientFunds,
            Some(DeclineReason::CurrencyMismatch) => pb::DeclineReason::CurrencyMismatch,
        } as i32,
        create_time: timestamp(a.create_time),
        update_time: timestamp(a.update_time),
    }
}

/// A ledger entry to its message.
pub fn entry(e: &LedgerEntry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        entry_id: e.entry_id.to_string(),
        transaction_id: e.transaction_id.clone(),
        account_id: e.account_id.clone(),
        amount: Some(e.amount.to_pb()),
        kind: match e.kind {
            EntryKind::Deposit => pb::EntryKind::Deposit,
            EntryKind::Hold => pb::EntryKind::Hold,
            EntryKind::Capture => pb::EntryKind::Capture,
            EntryKind::Void => pb::EntryKind::Void,
            EntryKind::Refund => pb::EntryKind::Refund,
        } as i32,
        authorization_id: e.authorization_id.clone().unwrap_or_default(),
        create_time: timestamp(e.create_time),
    }
}

/// A currency's totals to its message.
pub fn total(t: &CurrencyTotal) -> pb::CurrencyTotal {
    pb::CurrencyTotal {
        currency_code: t.currency_code.clone(),
        sum_minor: t.sum_minor,
        entry_count: t.entry_count,
    }
}

/// A domain error to the status a caller sees. Database errors are logged
/// in full and reach the caller only as a generic message.
pub fn status(e: PaymentsError) -> Status {
    match e.refusal() {
        Some((code, message)) => Status::new(code, message),
        None => match &e {
            PaymentsError::Db(db) => db.to_status("payments"),
            other => {
                tracing::error!(detail = %other, "internal error");
                Status::internal("internal error")
            }
        },
    }
}

/// The refusals an idempotency record keeps: every error that says the
/// request itself is refused, with the code and message its caller sees.
impl Refusal for PaymentsError {
    fn refusal(&self) -> Option<(Code, String)> {
        let code = match self {
            PaymentsError::NotFound { .. } => Code::NotFound,
            PaymentsError::InvalidState { .. }
            | PaymentsError::CurrencyMismatch { .. }
            | PaymentsError::OtherPayee(_)
            | PaymentsError::RefundTooLarge { .. }
            | PaymentsError::InsufficientFunds(_) => Code::FailedPrecondition,
            PaymentsError::Overflow => Code::OutOfRange,
            PaymentsError::Db(db) => return db.refusal(),
        };
        Some((code, self.to_string()))
    }
}
