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
