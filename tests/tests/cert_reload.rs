//! A certificate reload never swaps in a certificate that is expired, not
//! yet valid, or names another identity (the current one stays, and says
//! why in the log), while a good renewal is taken.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_mesh::{CertStore, IdentityPaths};
use weft_tests::pki::TestPki;

/// Puts `from`'s certificate and key where `to` reads them.
fn install(from: &IdentityPaths, to: &IdentityPaths) {
    std::fs::copy(&from.key, &to.key).unwrap();
    std::fs::copy(&from.cert, &to.cert).unwrap();
}

#[tokio::test]
async fn a_reload_refuses_expired_unborn_and_foreign_identities_and_takes_a_good_renewal() {
    let pki = TestPki::new().unwrap();
    let paths = pki.service("served", "inventory").unwrap();
    let store = CertStore::load(paths.clone(), Duration::from_millis(20)).unwrap();
    let first = store.current();
    let refused = [
        ("expired", pki.expired("expired", "inventory").unwrap()),
        (
            "not yet valid",
            pki.not_yet_valid("unborn", "inventory").unwrap(),
        ),
        (
            "another identity",
            pki.service("other", "payments").unwrap(),
        ),
    ];
    for (what, bad) in &refused {
        install(bad, &paths);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = store.current();
        assert_eq!(now.generation, first.generation, "{what} was swapped in");
        assert_eq!(now.id, first.id);
        assert_eq!(now.not_after, first.not_after, "{what} was swapped in");
    }
    let renewed = pki.service("renewed", "inventory").unwrap();
    install(&renewed, &paths);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.current().generation == first.generation {
        assert!(
            std::time::Instant::now() < deadline,
            "the good renewal was not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.current().id, first.id);
}
