//! Inventory's input checks at the gRPC edge (the shared ones are in
//! `weft_service::validate`): each failure is `INVALID_ARGUMENT` with a
//! message that names the offending field.

use tonic::Status;
use weft_proto::inventory::v1 as pb;
pub use weft_service::validate::{
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_QUANTITY, currency_code, decode_page_token,
    encode_page_token, id, idempotency_key, invalid, optional_text, page_size, price, quantity,
    sku, text,
};

use crate::domain::LineRequest;

/// The most lines one reservation may hold.
pub const MAX_LINES: usize = 100;
/// The most SKUs one GetStock may ask for.
pub const MAX_SKUS: usize = 500;

/// Reservation lines: 1 to [`MAX_LINES`], each SKU once.
pub fn lines(value: &[pb::ReservationLineRequest]) -> Result<Vec<LineRequest>, Status> {
    let lines = weft_service::validate::lines(
        value.iter().map(|l| (l.sku.as_str(), l.quantity)),
        MAX_LINES,
    )?;
    Ok(lines
        .into_iter()
        .map(|(sku, quantity)| LineRequest { sku, quantity })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_bounded_and_plain() {
        assert!(sku("sku", "ABC-1_2.3").is_ok());
        assert!(sku("sku", "").is_err());
        assert!(sku("sku", "has space").is_err());
        assert!(sku("sku", &"x".repeat(65)).is_err());
    }
}
