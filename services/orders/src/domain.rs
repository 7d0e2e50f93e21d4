//! Orders' domain values and errors, free of transport types: an order, its
//! saga's step, and why it was rejected.

use std::time::SystemTime;

use weft_service::DbError;
pub use weft_service::Money;

/// Where an order stands for its customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// The saga is still running.
    Pending,
    /// Stock sold and money captured.
    Confirmed,
    /// Not placed; nothing is held.
    Rejected,
    /// Placed, then cancelled: money refunded and stock returned.
    Cancelled,
}

/// The saga's next step. Forward: reserve, authorize, commit, capture.
/// Compensation: void the authorization, then release (or return) the
/// stock. Cancellation of a confirmed order: refund, then return the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reserve the lines' stock.
    Reserve,
    /// Hold the total on the payer's account.
    Authorize,
    /// Sell the reserved stock.
    Commit,
    /// Pay the held money to the merchant.
    Capture,
    /// Lift the hold (compensation).
    Void,
    /// Give the stock back: release a reservation, return a sale
    /// (compensation).
    Release,
    /// Give the captured money back (cancellation).
    Refund,
    /// Give sold stock back (cancellation).
    Restock,
    /// Settled.
    Done,
}

macro_rules! names {
    ($ty:ty { $($variant:ident = $name:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The name stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }

            /// Parses the name stored in the database.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

names!(OrderStatus {
    Pending = "PENDING",
    Confirmed = "CONFIRMED",
    Rejected = "REJECTED",
    Cancelled = "CANCELLED",
});

names!(Step {
    Reserve = "RESERVE",
    Authorize = "AUTHORIZE",
    Commit = "COMMIT",
    Capture = "CAPTURE",
    Void = "VOID",
    Release = "RELEASE",
    Refund = "REFUND",
    Restock = "RESTOCK",
    Done = "DONE",
});

names!(RejectionCode {
    OutOfStock = "OUT_OF_STOCK",
    UnknownProduct = "UNKNOWN_PRODUCT",
    PaymentDeclined = "PAYMENT_DECLINED",
    UnknownAccount = "UNKNOWN_ACCOUNT",
    Failed = "FAILED",
});

/// Why an order was rejected, in a form the caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionCode {
    /// A line asked for more than is available.
    OutOfStock,
    /// A line names a product that does not exist.
    UnknownProduct,
    /// The payment was declined.
    PaymentDeclined,
    /// The payment account does not exist.
    UnknownAccount,
    /// Anything else (details in the message).
    Failed,
}

/// A rejection: its code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What kind of rejection.
    pub code: RejectionCode,
    /// What happened.
    pub message: String,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// Priced once the stock is reserved.
    pub unit_price: Option<Money>,
}

/// An order to place.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Who orders.
    pub customer_id: String,
    /// Who pays.
    pub payment_account_id: String,
    /// What is ordered.
    pub lines: Vec<OrderLine>,
}

/// An order and its saga's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Assigned id.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// Who pays.
    pub payment_account_id: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Known once the stock is reserved and priced.
    pub total: Option<Money>,
    /// Where it stands.
    pub status: OrderStatus,
    /// The saga's next step.
    pub step: Step,
    /// Set when rejected.
    pub rejection: Option<Rejection>,
    /// Inventory's reservation, once made.
    pub reservation_id: Option<String>,
    /// Payments' authorization, once made.
    pub authorization_id: Option<String>,
    /// Money is held (or was captured).
    pub authorized: bool,
    /// The reserved stock was sold.
    pub committed: bool,
    /// Why it was cancelled, when it was.
    pub cancel_reason: Option<String>,
    /// Failed attempts at the current step.
    pub attempts: i32,
    /// When placed.
    pub create_time: SystemTime,
    /// When it last changed.
    pub update_time: SystemTime,
}

impl Order {
    /// This order with a rejection and the compensation that undoes what was
    /// done so far.
    pub fn rejected(&self, code: RejectionCode, message: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.rejection = Some(Rejection {
            code,
            message: message.into(),
        });
        next.step = if self.authorized {
            Step::Void
        } else if self.reservation_id.is_some() {
            Step::Release
        } else {
            next.status = OrderStatus::Rejected;
            Step::Done
        };
        next
    }

    /// The order's total from its priced lines, all in one currency; why
    /// not, when a line is unpriced, the currencies differ or the sum
    /// overflows.
    pub fn priced_total(&self) -> Result<Money, &'static str> {
        let mut total: Option<Money> = None;
        for line in &self.lines {
            let price = line
                .unit_price
                .as_ref()
                .ok_or("a line came back without a price")?;
            let amount = price
                .amount_minor
                .checked_mul(line.quantity)
                .ok_or("the order total is too large")?;
            match &mut total {
                None => total = Some(Money::new(amount, price.currency_code.clone())),
                Some(t) if t.currency_code == price.currency_code => {
                    t.amount_minor = t
                        .amount_minor
                        .checked_add(amount)
                        .ok_or("the order total is too large")?;
                }
                Some(_) => return Err("the lines are priced in more than one currency"),
            }
        }
        total.ok_or("the order has no lines")
    }

    /// The idempotency key of this order's call for `step`: the same on every
    /// retry and resume, different for every order and step.
    pub fn key(&self, step: Step) -> String {
        format!(
            "order/{}/{}",
            self.order_id,
            step.as_str().to_ascii_lowercase()
        )
    }
}

#[cfg(test)]
impl Order {
    /// A new order `o1` of customer `c`, paid from `payer`, with `lines`
    /// unpriced: where the saga starts.
    pub(crate) fn sample(lines: &[(&str, i64)]) -> Self {
        Order {
            order_id: "o1".into(),
            customer_id: "c".into(),
            payment_account_id: "payer".into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| OrderLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                    unit_price: None,
                })
                .collect(),
            total: None,
            status: OrderStatus::Pending,
            step: Step::Reserve,
            rejection: None,
            reservation_id: None,
            authorization_id: None,
            authorized: false,
            committed: false,
            cancel_reason: None,
            attempts: 0,
            create_time: SystemTime::UNIX_EPOCH,
            update_time: SystemTime::UNIX_EPOCH,
        }
    }
}

/// What can go wrong in orders, as the domain sees it.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// The order does not exist.
    #[error("order {0:?} not found")]
    NotFound(String),
    /// The order is in a state the action cannot start from.
    #[error("order {order_id:?} is {status}: {why}")]
    InvalidState {
        /// The order.
        order_id: String,
        /// Its status.
        status: &'static str,
        /// What the caller can do.
        why: &'static str,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for OrdersError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        Order::sample(&[])
    }

    #[test]
    fn rejection_compensates_only_what_was_done() {
        let nothing = order().rejected(RejectionCode::OutOfStock, "x");
        assert_eq!(
            (nothing.step, nothing.status),
            (Step::Done, OrderStatus::Rejected)
        );
        let mut reserved = order();
        reserved.reservation_id = Some("r".into());
        assert_eq!(
            reserved.rejected(RejectionCode::PaymentDeclined, "x").step,
            Step::Release
        );
        let mut held = reserved.clone();
        held.authorized = true;
        let next = held.rejected(RejectionCode::Failed, "x");
        assert_eq!((next.step, next.status), (Step::Void, OrderStatus::Pending));
    }

    #[test]
    fn names_round_trip_and_keys_differ_by_step() {
        for &step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
        }
        assert_eq!(order().key(Step::Reserve), "order/o1/reserve");
        assert_ne!(order().key(Step::Reserve), order().key(Step::Release));
    }
}
