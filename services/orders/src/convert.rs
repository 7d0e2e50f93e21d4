//! Conversions from orders' domain values to their Protobuf messages, and
//! from domain errors to gRPC statuses that reveal no internal detail.

use tonic::Status;
use weft_proto::orders::v1 as pb;

use crate::domain::{Money, Order, OrderStatus, OrdersError, RejectionCode};

/// An order to its message.
pub fn order(o: &Order) -> pb::Order {
    pb::Order {
        order_id: o.order_id.clone(),
        customer_id: o.customer_id.clone(),
        payment_account_id: o.payment_account_id.clone(),
        lines: o
            .lines
            .iter()
            .map(|l| pb::OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price.as_ref().map(Money::to_pb),
                line_total: l.unit_price.as_ref().and_then(|p| {
                    p.amount_minor
                        .checked_mul(l.quantity)
                        .map(|t| Money::new(t, p.currency_code.clone()).to_pb())
                }),
            })
            .collect(),
        total: o.total.as_ref().map(Money::to_pb),
        status: match o.status {
            OrderStatus::Pending => pb::OrderStatus::Pending,
            OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
            OrderStatus::Rejected => pb::OrderStatus::Rejected,
            OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        } as i32,
        rejection: o.rejection.as_ref().map(|r| pb::Rejection {
            code: match r.code {
                RejectionCode::OutOfStock => pb::RejectionCode::OutOfStock,
                RejectionCode::UnknownProduct => pb::RejectionCode::UnknownProduct,
                RejectionCode::PaymentDeclined => pb::RejectionCode::PaymentDeclined,
                RejectionCode::UnknownAccount => pb::RejectionCode::UnknownAccount,
                RejectionCode::Failed => pb::RejectionCode::Failed,
            } as i32,
            message: r.message.clone(),
        }),
        create_time: Some(prost_types::Timestamp::from(o.create_time)),
        update_time: Some(prost_types::Timestamp::from(o.update_time)),
    }
}

/// A domain error to the status a caller sees.
pub fn status(e: OrdersError) -> Status {
    match &e {
        OrdersError::NotFound(_) => Status::not_found(e.to_string()),
        OrdersError::InvalidState { .. } => Status::failed_precondition(e.to_string()),
        OrdersError::Db(db) => db.to_status("orders"),
    }
}
