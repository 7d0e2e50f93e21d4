//! Money as the services hold it: an amount in minor units of an ISO 4217
//! currency, and its message form.

use weft_proto::money::v1 as money_pb;

/// An amount in minor units of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency_code: String,
}

impl Money {
    /// `amount_minor` of `currency_code`.
    pub fn new(amount_minor: i64, currency_code: impl Into<String>) -> Self {
        Self {
            amount_minor,
            currency_code: currency_code.into(),
        }
    }

    /// The message form.
    pub fn to_pb(&self) -> money_pb::Money {
        money_pb::Money {
            amount_minor: self.amount_minor,
            currency_code: self.currency_code.clone(),
        }
    }
}
