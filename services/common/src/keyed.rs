//! Idempotency keys as the store sees them: who called, which method, the
//! caller's key, and a digest of the rest of the request, so a replay with
//! a different request is told apart from a true retry, and one caller's
//! key never touches another caller's calls (or another method's).

use sha2::{Digest, Sha256};
use tonic::Status;
use weft_mesh::CallerIdentity;

use crate::validate;

/// An idempotency key, whose it is, and the fingerprint of the request
/// that came with it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The caller's SPIFFE id (empty in development plaintext, where nobody
    /// is authenticated).
    pub caller: String,
    /// The method, as `Method` (its service is the server's).
    pub method: String,
    /// The caller's key.
    pub key: String,
    /// A digest of the request (method and fields other than the key).
    pub fingerprint: Vec<u8>,
}

impl IdempotencyKey {
    /// Checks `key` and fingerprints `request` for `caller`'s call of
    /// `method`, with the key field cleared by `clear_key`.
    pub fn of<M: prost::Message + Clone>(
        caller: &str,
        method: &str,
        request: &M,
        key: &str,
        clear_key: impl FnOnce(&mut M),
    ) -> Result<Self, Status> {
        validate::idempotency_key(key)?;
        let mut rest = request.clone();
        clear_key(&mut rest);
        let mut digest = Sha256::new();
        digest.update(method.as_bytes());
        digest.update([0]);
        digest.update(rest.encode_to_vec());
        Ok(Self {
            caller: caller.to_owned(),
            method: method.to_owned(),
            key: key.to_owned(),
            fingerprint: digest.finalize().to_vec(),
        })
    }
}

/// The SPIFFE id of `request`'s caller, as the authorization layer verified
/// it; empty when nobody is authenticated (development plaintext).
pub fn caller_of<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<CallerIdentity>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use weft_proto::inventory::v1::AdjustStockRequest;

    use super::*;

    fn request(key: &str, sku: &str, delta: i64, reason: &str) -> AdjustStockRequest {
        AdjustStockRequest {
            idempotency_key: key.into(),
            sku: sku.into(),
            delta,
            reason: reason.into(),
        }
    }

    fn fingerprint(method: &str, r: &AdjustStockRequest) -> Vec<u8> {
        IdempotencyKey::of(
            "spiffe://td/operator/a",
            method,
            r,
            &r.idempotency_key.clone(),
            |r| r.idempotency_key.clear(),
        )
        .map(|k| k.fingerprint)
        .unwrap_or_default()
    }

    proptest! {
        #[test]
        fn the_fingerprint_ignores_the_key_and_sees_every_other_field(
            k1 in "[a-z0-9]{1,32}", k2 in "[a-z0-9]{1,32}",
            sku in "[A-Z0-9]{1,16}", delta in any::<i64>(), reason in ".{0,40}",
            other_delta in any::<i64>(),
        ) {
            let a = request(&k1, &sku, delta, &reason);
            // The same request under another key: the same fingerprint.
            prop_assert_eq!(fingerprint("AdjustStock", &a), fingerprint("AdjustStock", &request(&k2, &sku, delta, &reason)));
            // Another value of any field, or another method: another one.
            if other_delta != delta {
                prop_assert_ne!(fingerprint("AdjustStock", &a), fingerprint("AdjustStock", &request(&k1, &sku, other_delta, &reason)));
            }
            prop_assert_ne!(fingerprint("AdjustStock", &a), fingerprint("AdjustStock", &request(&k1, &format!("{sku}X"), delta, &reason)));
            prop_assert_ne!(fingerprint("AdjustStock", &a), fingerprint("CreateProduct", &a));
            // It is a SHA-256 digest, whatever the request's size.
            prop_assert_eq!(fingerprint("AdjustStock", &a).len(), 32);
        }
    }
}
