//! Each service names its own default addresses (the shared crate knows no
//! service): all three run side by side on one machine without settings.

use std::collections::HashSet;
use std::net::SocketAddr;

#[test]
fn every_service_has_its_own_default_ports() {
    let all = [
        weft_inventory::DEFAULTS,
        weft_payments::DEFAULTS,
        weft_orders::DEFAULTS,
    ];
    let mut seen = HashSet::new();
    for d in all {
        for addr in [d.listen, d.metrics] {
            assert!(addr.parse::<SocketAddr>().is_ok(), "{addr}");
            assert!(seen.insert(addr), "{addr} is taken twice");
        }
    }
}
