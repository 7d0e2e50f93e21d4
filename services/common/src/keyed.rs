//! Idempotency keys as the store sees them: the caller's key and a digest of
//! the rest of the request, so a replay with a different request is told
//! apart from a true retry.

use sha2::{Digest, Sha256};
use tonic::Status;

use crate::validate;

/// An idempotency key and the fingerprint of the request that came with it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The caller's key.
    pub key: String,
    /// A digest of the request (method and fields other than the key).
    pub fingerprint: Vec<u8>,
}

impl IdempotencyKey {
    /// Checks `key` and fingerprints `request` for `method`, with the key
    /// field cleared by `clear_key`.
    pub fn of<M: prost::Message + Clone>(
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
            key: key.to_owned(),
            fingerprint: digest.finalize().to_vec(),
        })
    }
}
