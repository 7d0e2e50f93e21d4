//! Inventory's domain values and errors, free of transport types: the gRPC edge
//! converts protos into these and these errors into statuses.

use std::time::SystemTime;

use weft_service::DbError;
pub use weft_service::Money;

/// A product in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price of one unit.
    pub unit_price: Money,
    /// Creation time.
    pub create_time: SystemTime,
}

/// Stock counters of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    /// Units that can be reserved.
    pub available: i64,
    /// Units held by reservations.
    pub reserved: i64,
    /// Units sold.
    pub sold: i64,
}

/// A product to create.
#[derive(Debug, Clone)]
pub struct NewProduct {
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price of one unit.
    pub unit_price: Money,
    /// Units in stock from the start.
    pub initial_stock: i64,
}

/// One line of a reservation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRequest {
    /// Product.
    pub sku: String,
    /// Units to hold.
    pub quantity: i64,
}

/// One reserved line, priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedLine {
    /// Product.
    pub sku: String,
    /// Units held.
    pub quantity: i64,
    /// Price per unit at reservation time.
    pub unit_price: Money,
}

/// The state of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    /// Stock is held.
    Held,
    /// Stock is sold.
    Committed,
    /// The hold was released.
    Released,
    /// The sale was undone.
    Returned,
}

impl ReservationStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Committed => "COMMITTED",
            Self::Released => "RELEASED",
            Self::Returned => "RETURNED",
        }
    }

    /// Parses the name stored in the database.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "HELD" => Self::Held,
            "COMMITTED" => Self::Committed,
            "RELEASED" => Self::Released,
            "RETURNED" => Self::Returned,
            _ => return None,
        })
    }
}

/// Stock held for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Assigned id.
    pub reservation_id: String,
    /// The caller's order id.
    pub order_id: String,
    /// Lines in request order.
    pub lines: Vec<ReservedLine>,
    /// Current state.
    pub status: ReservationStatus,
    /// Creation time.
    pub create_time: SystemTime,
    /// Last state change.
    pub update_time: SystemTime,
}

/// A state change asked of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// HELD -> COMMITTED.
    Commit,
    /// HELD -> RELEASED.
    Release,
    /// COMMITTED -> RETURNED.
    Return,
}

impl Transition {
    /// The state a reservation must be in for this transition.
    pub fn from(self) -> ReservationStatus {
        match self {
            Self::Commit | Self::Release => ReservationStatus::Held,
            Self::Return => ReservationStatus::Committed,
        }
    }

    /// The state the transition leads to.
    pub fn to(self) -> ReservationStatus {
        match self {
            Self::Commit => ReservationStatus::Committed,
            Self::Release => ReservationStatus::Released,
            Self::Return => ReservationStatus::Returned,
        }
    }
}

/// What can go wrong in inventory, as the domain sees it.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A named thing does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// The id the caller gave.
        id: String,
    },
    /// A product with this SKU exists already.
    #[error("product {sku:?} already exists")]
    AlreadyExists {
        /// The SKU.
        sku: String,
    },
    /// A line asks for more than is available.
    #[error("insufficient stock for {sku:?}: requested {requested}, available {available}")]
    InsufficientStock {
        /// The SKU.
        sku: String,
        /// Units asked for.
        requested: i64,
        /// Units available.
        available: i64,
    },
    /// A write-off asks for more than is available.
    #[error("cannot write off {requested} units of {sku:?}: only {available} available")]
    WriteOffTooLarge {
        /// The SKU.
        sku: String,
        /// Units asked for.
        requested: i64,
        /// Units available.
        available: i64,
    },
    /// A quantity the database adds up would pass what it can keep.
    #[error("a quantity would exceed the largest supported value")]
    TooLarge,
    /// A counter would overflow.
    #[error("stock of {sku:?} would exceed the largest supported quantity")]
    Overflow {
        /// The SKU.
        sku: String,
    },
    /// The reservation is in a state the transition cannot start from.
    #[error("reservation {reservation_id:?} is {status}, cannot {action}")]
    InvalidState {
        /// The reservation.
        reservation_id: String,
        /// Its state.
        status: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// The idempotency key was used with a different request.
    #[error("idempotency_key was already used with a different request")]
    IdempotencyConflict,
    /// The database could not be reached in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Two transactions collided; the call may be retried.
    #[error("concurrent update: {0}")]
    Conflict(String),
    /// Anything else; details are logged, never returned to callers.
    #[error("internal error: {0}")]
    Internal(String),
    /// A refusal answered again from its idempotency record.
    #[error("{message}")]
    Replayed {
        /// The first answer's code.
        code: tonic::Code,
        /// The first answer's message.
        message: String,
    },
}

impl From<DbError> for InventoryError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(detail) => Self::Unavailable(detail),
            DbError::Conflict(detail) => Self::Conflict(detail),
            DbError::IdempotencyConflict => Self::IdempotencyConflict,
            DbError::Internal(detail) => Self::Internal(detail),
            // A counter in SQL arithmetic (the checked paths name the SKU).
            DbError::OutOfRange(_) => Self::TooLarge,
            DbError::Refused { code, message } => Self::Replayed { code, message },
        }
    }
}
