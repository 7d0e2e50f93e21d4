//! Conversions from inventory's domain values to their Protobuf messages, and
//! from domain errors to gRPC statuses that reveal no internal detail.

use std::time::SystemTime;

use tonic::{Code, Status};
use weft_proto::inventory::v1 as pb;
use weft_proto::money::v1 as money_pb;
use weft_service::db::Refusal;

use crate::domain::{InventoryError, Money, Product, Reservation, ReservationStatus, Stock};

/// Money to its message.
pub fn money(m: &Money) -> money_pb::Money {
    m.to_pb()
}

/// A time to a Timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A product to its message.
pub fn product(p: &Product) -> pb::Product {
    pb::Product {
        sku: p.sku.clone(),
        name: p.name.clone(),
        unit_price: Some(money(&p.unit_price)),
        create_time: Some(timestamp(p.create_time)),
    }
}

/// A stock level to its message.
pub fn stock(sku: &str, s: &Stock) -> pb::StockLevel {
    pb::StockLevel {
        sku: sku.into(),
        available: s.available,
        reserved: s.reserved,
        sold: s.sold,
    }
}

/// A reservation to its message.
pub fn reservation(r: &Reservation) -> pb::Reservation {
    pb::Reservation {
        reservation_id: r.reservation_id.clone(),
        order_id: r.order_id.clone(),
        lines: r
            .lines
            .iter()
            .map(|l| pb::ReservationLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: Some(money(&l.unit_price)),
            })
            .collect(),
        status: match r.status {
            ReservationStatus::Held => pb::ReservationStatus::Held,
            ReservationStatus::Committed => pb::ReservationStatus::Committed,
            ReservationStatus::Released => pb::ReservationStatus::Released,
            ReservationStatus::Returned => pb::ReservationStatus::Returned,
        } as i32,
        create_time: Some(timestamp(r.create_time)),
        update_time: Some(timestamp(r.update_time)),
    }
}

/// A domain error to the status a caller sees. Database and internal errors
/// are logged here in full and reach the caller only as a generic message.
pub fn status(e: InventoryError) -> Status {
    if let Some((code, message)) = e.refusal() {
        return Status::new(code, message);
    }
    match &e {
        InventoryError::IdempotencyConflict => Status::failed_precondition(e.to_string()),
        InventoryError::Conflict(detail) => {
            tracing::info!(%detail, "transaction collided");
            Status::aborted("concurrent update; retry the call")
        }
        InventoryError::Unavailable(detail) => {
            tracing::warn!(%detail, "database unavailable");
            Status::unavailable("inventory is temporarily unavailable")
        }
        other => {
            tracing::error!(detail = %other, "internal error");
            Status::internal("internal error")
        }
    }
}

/// The refusals an idempotency record keeps: every error that says the
/// request itself is refused, with the code and message its caller sees.
impl Refusal for InventoryError {
    fn refusal(&self) -> Option<(Code, String)> {
        let code = match self {
            InventoryError::NotFound { .. } => Code::NotFound,
            InventoryError::AlreadyExists { .. } => Code::AlreadyExists,
            InventoryError::InsufficientStock { .. }
            | InventoryError::WriteOffTooLarge { .. }
            | InventoryError::InvalidState { .. } => Code::FailedPrecondition,
            InventoryError::Overflow { .. } | InventoryError::TooLarge => Code::OutOfRange,
            InventoryError::Replayed { code, .. } => *code,
            InventoryError::IdempotencyConflict
            | InventoryError::Conflict(_)
            | InventoryError::Unavailable(_)
            | InventoryError::Internal(_) => return None,
        };
        Some((code, self.to_string()))
    }
}
