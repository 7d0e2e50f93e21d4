//! Wishlist's input checks at the gRPC edge: each failure is
//! `INVALID_ARGUMENT` with a message that names the field, built from Weft's
//! shared checks so a customer id or a SKU means the same as in orders and
//! inventory.

use tonic::Status;
use weft_service::validate;

/// The longest customer id, as in orders.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;

/// A customer id: 1 to 128 characters, not only spaces, no control characters.
pub fn customer_id(value: &str) -> Result<(), Status> {
    validate::text("customer_id", value, MAX_CUSTOMER_ID_CHARS)
}

/// A SKU by inventory's rules: 1 to 64 letters, digits, '.', '_' or '-'.
/// Checked here too, so a malformed one costs no call to inventory.
pub fn sku(value: &str) -> Result<(), Status> {
    validate::sku("sku", value)
}

/// Both fields of a request that names a customer and a product.
pub fn item(customer: &str, sku_value: &str) -> Result<(), Status> {
    customer_id(customer)?;
    sku(sku_value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The status is INVALID_ARGUMENT and its message starts with `field`.
    fn names(result: Result<(), Status>, field: &str) -> bool {
        let status = result.unwrap_err();
        status.code() == tonic::Code::InvalidArgument
            && status.message().starts_with(&format!("{field}: "))
    }

    #[test]
    fn customer_ids_are_required_bounded_and_printable() {
        assert!(customer_id("alice").is_ok());
        assert!(customer_id("Alice Smith <alice@example.com>").is_ok());
        assert!(customer_id(&"c".repeat(128)).is_ok());
        // Counted in characters, not bytes.
        assert!(customer_id(&"é".repeat(128)).is_ok());
        for bad in ["", "   ", "a\nb", "tab\there"] {
            assert!(names(customer_id(bad), "customer_id"), "{bad:?}");
        }
        assert!(names(customer_id(&"c".repeat(129)), "customer_id"));
    }

    #[test]
    fn skus_follow_inventorys_rules() {
        assert!(sku("WIDGET-1").is_ok());
        assert!(sku("a.b_c-9").is_ok());
        assert!(sku(&"S".repeat(64)).is_ok());
        for bad in ["", "has space", "emoji-\u{1f381}", "semi;colon"] {
            assert!(names(sku(bad), "sku"), "{bad:?}");
        }
        assert!(names(sku(&"S".repeat(65)), "sku"));
    }

    #[test]
    fn a_request_is_checked_customer_first() {
        assert!(item("alice", "WIDGET-1").is_ok());
        assert!(names(item("", "bad sku"), "customer_id"));
        assert!(names(item("alice", "bad sku"), "sku"));
    }
}
