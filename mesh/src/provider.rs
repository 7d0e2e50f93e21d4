//! The one crypto provider of the whole workspace: aws-lc-rs, the provider
//! the AWS SDK already uses. Configurations are built with it explicitly, so
//! nothing depends on a process-wide default being installed.
//!
//! Key exchange is post-quantum hybrid by default (X25519MLKEM768 offered and
//! preferred, X25519 and the NIST curves after it for peers without it): a
//! recording of today's traffic stays private against a future quantum
//! computer. `KeyExchange::Classical` leaves ML-KEM out entirely.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::kx_group;

/// The key exchange groups TLS configurations offer and accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyExchange {
    /// X25519MLKEM768 first, then the classical groups.
    #[default]
    Hybrid,
    /// X25519, P-256 and P-384 only.
    Classical,
}

impl FromStr for KeyExchange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hybrid" => Ok(Self::Hybrid),
            "classical" => Ok(Self::Classical),
            other => Err(format!("{other:?}: use hybrid or classical")),
        }
    }
}

/// What configurations built from now on use (set once at start from
/// `WEFT_TLS_KEY_EXCHANGE`; a benchmark compares both in one process).
static KEY_EXCHANGE: AtomicU8 = AtomicU8::new(0);

/// Sets the key exchange of every TLS configuration built after this call
/// (configurations already built keep theirs).
pub fn set_key_exchange(kx: KeyExchange) {
    KEY_EXCHANGE.store(
        match kx {
            KeyExchange::Hybrid => 0,
            KeyExchange::Classical => 1,
        },
        Ordering::Relaxed,
    );
}

/// The key exchange configurations are built with now.
pub fn key_exchange() -> KeyExchange {
    match KEY_EXCHANGE.load(Ordering::Relaxed) {
        1 => KeyExchange::Classical,
        _ => KeyExchange::Hybrid,
    }
}

/// The provider for every TLS configuration Weft builds.
pub fn provider() -> Arc<CryptoProvider> {
    provider_for(key_exchange())
}

/// The provider with the given key exchange.
pub fn provider_for(kx: KeyExchange) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = match kx {
        KeyExchange::Hybrid => vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ],
        KeyExchange::Classical => vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
    };
    Arc::new(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_is_the_default_and_preferred() {
        assert_eq!(KeyExchange::default(), KeyExchange::Hybrid);
        let names = |kx| {
            provider_for(kx)
                .kx_groups
                .iter()
                .map(|g| format!("{:?}", g.name()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(KeyExchange::Hybrid)[0], "X25519MLKEM768");
        assert!(
            !names(KeyExchange::Classical)
                .iter()
                .any(|n| n.contains("MLKEM"))
        );
        assert_eq!("classical".parse(), Ok(KeyExchange::Classical));
        assert!(
            "pq".parse::<KeyExchange>()
                .unwrap_err()
                .contains("hybrid or classical")
        );
    }
}
