//! Input checks every service's gRPC edge shares: each failure is
//! `INVALID_ARGUMENT` with a message that names the offending field.

use tonic::Status;
use weft_proto::money::v1 as money_pb;

use crate::money::Money;

/// The most units one line or adjustment may move.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// The largest page.
pub const MAX_PAGE_SIZE: i32 = 500;
/// The page size when the caller leaves it at zero.
pub const DEFAULT_PAGE_SIZE: i32 = 100;

/// `INVALID_ARGUMENT` for `field`.
pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// An idempotency key: 1 to 128 printable ASCII characters.
pub fn idempotency_key(value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid("idempotency_key", "is required"));
    }
    if value.len() > 128 {
        return Err(invalid("idempotency_key", "must be at most 128 characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "idempotency_key",
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// A SKU: 1 to 64 letters, digits, '.', '_' or '-'.
pub fn sku(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > 64 {
        return Err(invalid(field, "must be at most 64 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            field,
            "may hold only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// A positive quantity up to [`MAX_QUANTITY`].
pub fn quantity(field: &str, value: i64) -> Result<(), Status> {
    if !(1..=MAX_QUANTITY).contains(&value) {
        return Err(invalid(
            field,
            format_args!("must be between 1 and {MAX_QUANTITY}"),
        ));
    }
    Ok(())
}

/// Lines of SKUs and quantities: 1 to `max`, each SKU valid and named once,
/// each quantity valid; returned in order.
pub fn lines<'a>(
    value: impl ExactSizeIterator<Item = (&'a str, i64)>,
    max: usize,
) -> Result<Vec<(String, i64)>, Status> {
    if value.len() == 0 {
        return Err(invalid("lines", "must hold at least one line"));
    }
    if value.len() > max {
        return Err(invalid(
            "lines",
            format_args!("must hold at most {max} lines"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    value
        .enumerate()
        .map(|(i, (line_sku, line_quantity))| {
            sku(&format!("lines[{i}].sku"), line_sku)?;
            quantity(&format!("lines[{i}].quantity"), line_quantity)?;
            if !seen.insert(line_sku) {
                return Err(invalid(
                    &format!("lines[{i}].sku"),
                    "appears in more than one line",
                ));
            }
            Ok((line_sku.to_owned(), line_quantity))
        })
        .collect()
}

/// Free text that is required and bounded.
pub fn text(field: &str, value: &str, max_chars: usize) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    optional_text(field, value, max_chars)
}

/// Free text that may be empty but is bounded and has no control characters.
pub fn optional_text(field: &str, value: &str, max_chars: usize) -> Result<(), Status> {
    if value.chars().count() > max_chars {
        return Err(invalid(
            field,
            format_args!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A price: present, not negative, with an ISO 4217-shaped currency code.
pub fn price(field: &str, value: Option<&money_pb::Money>) -> Result<Money, Status> {
    let money = value.ok_or_else(|| invalid(field, "is required"))?;
    if money.amount_minor < 0 {
        return Err(invalid(
            &format!("{field}.amount_minor"),
            "must not be negative",
        ));
    }
    currency_code(&format!("{field}.currency_code"), &money.currency_code)?;
    Ok(Money {
        amount_minor: money.amount_minor,
        currency_code: money.currency_code.clone(),
    })
}

/// An amount to move: present, positive, with an ISO 4217-shaped code.
pub fn positive_amount(field: &str, value: Option<&money_pb::Money>) -> Result<Money, Status> {
    let money = price(field, value)?;
    if money.amount_minor == 0 {
        return Err(invalid(
            &format!("{field}.amount_minor"),
            "must be positive",
        ));
    }
    Ok(money)
}

/// Three upper-case ASCII letters.
pub fn currency_code(field: &str, value: &str) -> Result<(), Status> {
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(field, "must be an ISO 4217 code such as \"USD\""));
    }
    Ok(())
}

/// An id the service assigned: a UUID in its text form.
pub fn id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    let shape_ok = value.len() == 36
        && value.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !shape_ok {
        return Err(invalid(field, "is not a valid id"));
    }
    Ok(())
}

/// A page size: 0 (the default) or 1 to [`MAX_PAGE_SIZE`].
pub fn page_size(value: i32) -> Result<i64, Status> {
    match value {
        0 => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        1..=MAX_PAGE_SIZE => Ok(i64::from(value)),
        _ => Err(invalid(
            "page_size",
            format_args!("must be between 0 and {MAX_PAGE_SIZE}"),
        )),
    }
}

/// Page tokens are the hex of the last SKU of the previous page, behind a
/// version prefix, so they stay opaque to callers and can change form later.
pub fn encode_page_token(last_sku: &str) -> String {
    let mut token = String::from("v1.");
    for b in last_sku.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// Reads a token made by [`encode_page_token`]; empty means the first page.
pub fn decode_page_token(token: &str) -> Result<String, Status> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let bad = || invalid("page_token", "is not a token this service issued");
    let hex = token.strip_prefix("v1.").ok_or_else(bad)?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = encode_page_token("SKU-1.a_b");
        assert_eq!(decode_page_token(&token).unwrap(), "SKU-1.a_b");
        assert_eq!(decode_page_token("").unwrap(), "");
        for bad in ["x", "v1.zz", "v1.abc", "v2.41"] {
            let err = decode_page_token(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("page_token"));
        }
    }

    #[test]
    fn amounts_name_their_field() {
        let usd = |amount_minor| money_pb::Money {
            amount_minor,
            currency_code: "USD".into(),
        };
        assert!(price("amount", Some(&usd(0))).is_ok());
        assert!(positive_amount("amount", Some(&usd(0))).is_err());
        let err = price("unit_price", Some(&usd(-1))).unwrap_err();
        assert!(
            err.message().starts_with("unit_price.amount_minor"),
            "{err:?}"
        );
        let err = price("unit_price", None).unwrap_err();
        assert!(err.message().starts_with("unit_price"), "{err:?}");
        let bad_code = money_pb::Money {
            amount_minor: 1,
            currency_code: "usd".into(),
        };
        let err = positive_amount("amount", Some(&bad_code)).unwrap_err();
        assert!(err.message().starts_with("amount.currency_code"), "{err:?}");
    }

    #[test]
    fn ids_must_be_uuids() {
        assert!(id("reservation_id", "0f8fad5b-d9cb-469f-a165-70867728950e").is_ok());
        for bad in [
            "",
            "nope",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "0f8fad5bd9cb469fa16570867728950e",
        ] {
            assert!(id("reservation_id", bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// An error names its field and is INVALID_ARGUMENT.
    fn names(status: &Status, field: &str) -> bool {
        status.code() == tonic::Code::InvalidArgument
            && status.message().starts_with(&format!("{field}: "))
    }

    proptest! {
        #[test]
        fn every_validator_takes_any_input_and_names_its_field(s in ".{0,300}", n in any::<i64>()) {
            for result in [
                idempotency_key(&s).map(|_| ()).map_err(|e| (e, "idempotency_key")),
                sku("sku", &s).map_err(|e| (e, "sku")),
                quantity("quantity", n).map_err(|e| (e, "quantity")),
                text("name", &s, 200).map_err(|e| (e, "name")),
                currency_code("currency_code", &s).map_err(|e| (e, "currency_code")),
                id("reservation_id", &s).map_err(|e| (e, "reservation_id")),
                decode_page_token(&s).map(|_| ()).map_err(|e| (e, "page_token")),
            ] {
                if let Err((status, field)) = result {
                    prop_assert!(names(&status, field), "{status:?}");
                }
            }
        }

        #[test]
        fn an_accepted_key_is_printable_ascii_of_at_most_128(s in "\\PC{0,200}") {
            if idempotency_key(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= 128);
                prop_assert!(s.bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        #[test]
        fn an_accepted_sku_has_only_its_characters(s in "[A-Za-z0-9._ -]{0,80}") {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            prop_assert_eq!(sku("sku", &s).is_ok(), ok);
        }

        #[test]
        fn page_tokens_round_trip(s in "\\PC{0,64}") {
            prop_assert_eq!(decode_page_token(&encode_page_token(&s)).unwrap(), s);
        }
    }
}
