//! Inventory's input checks at the gRPC edge (the shared ones are in
//! `weft_service::validate`): each failure is `INVALID_ARGUMENT` with a
//! message that names the offending field.

use std::collections::HashSet;

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
    if value.is_empty() {
        return Err(invalid("lines", "must hold at least one line"));
    }
    if value.len() > MAX_LINES {
        return Err(invalid(
            "lines",
            format_args!("must hold at most {MAX_LINES} lines"),
        ));
    }
    let mut seen = HashSet::new();
    value
        .iter()
        .enumerate()
        .map(|(i, line)| {
            sku(&format!("lines[{i}].sku"), &line.sku)?;
            quantity(&format!("lines[{i}].quantity"), line.quantity)?;
            if !seen.insert(line.sku.as_str()) {
                return Err(invalid(
                    &format!("lines[{i}].sku"),
                    "appears in more than one line",
                ));
            }
            Ok(LineRequest {
                sku: line.sku.clone(),
                quantity: line.quantity,
            })
        })
        .collect()
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
