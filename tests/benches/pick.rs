//! What each traffic-control rule costs the pick, printed: nanoseconds per
//! pick of an endpoint among eight (two versions in two zones), with no
//! rule, and with a weighted split, a header match, zone preference, and a
//! method policy lookup, each against the plain pick in the same run. Each
//! row runs the plain pick and the rule in turn, `REPS` times, and prints
//! the medians and the median extra nanoseconds with their spread. The
//! per-call cost of a rule is what it adds on top of the plain pick.
//! Run: `cargo bench -p weft-tests --bench pick`.

// Bench code: a panic is a failed run with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use tonic::codegen::http::{HeaderMap, HeaderValue};
use weft_mesh::client::{EndpointState, FailurePolicy, Locality, Pool};
use weft_mesh::{RouteTable, Routes};
use weft_tests::bench::{self, median};

/// Picks per measurement.
const PICKS: u32 = 200_000;
/// Interleaved repetitions per row.
const REPS: usize = 7;

fn main() {
    bench::run(run()).unwrap();
}

fn endpoints() -> Vec<Arc<EndpointState>> {
    let mut all = Vec::new();
    // Versions alternate; the first four are in zone a, the rest in b.
    for n in 0..8u16 {
        let version = if n % 2 == 0 { "1.4" } else { "1.5" };
        let zone = if n < 4 { "a" } else { "b" };
        let channel = weft_mesh::client::Conn::plaintext(([127, 0, 0, 1], 9).into()).unwrap();
        let e = EndpointState::new(
            format!("e{n}"),
            ([127, 0, 0, 1], 9000 + n).into(),
            vec![channel],
            FailurePolicy::default(),
        )
        .with_attributes(
            [
                ("version".to_owned(), version.to_owned()),
                ("zone".to_owned(), zone.to_owned()),
            ]
            .into(),
        );
        e.health_reported(true);
        all.push(Arc::new(e));
    }
    all
}

/// A pick with a rule applied.
type Rule<'a> = Box<dyn Fn() -> bool + 'a>;

/// Nanoseconds per call of `f`, over `PICKS` calls.
fn per_call(mut f: impl FnMut() -> bool) -> f64 {
    let started = Instant::now();
    let mut found = 0u32;
    for _ in 0..PICKS {
        found += u32::from(black_box(f()));
    }
    assert_eq!(found, PICKS, "every pick found an endpoint");
    started.elapsed().as_nanos() as f64 / f64::from(PICKS)
}

async fn run() {
    let table = RouteTable::from_toml(
        r#"
        [services.inventory]
        match = [{ header = "x-weft-route", value = "canary", subset = { version = "1.5" } }]
        split = [
          { subset = { version = "1.4" }, weight = 95 },
          { subset = { version = "1.5" }, weight = 5 },
        ]
        method = [
          { name = "weft.inventory.v1.InventoryService/GetStock", timeout = "300ms", attempts = 3 },
          { name = "weft.inventory.v1.InventoryService/*", attempts = 1 },
        ]
        default = { timeout = "2s" }
        "#,
    )
    .unwrap();
    let routes = Routes::fixed(table);
    let pool = Pool::of(endpoints());
    let zoned = Pool::of(endpoints());
    zoned.set_locality(Locality {
        zone: "a".into(),
        min_share: 0.2,
    });
    let plain_headers = HeaderMap::new();
    let mut canary_headers = HeaderMap::new();
    canary_headers.insert("x-weft-route", HeaderValue::from_static("canary"));
    let path = "/weft.inventory.v1.InventoryService/GetStock";

    let plain = || pool.pick(&[]).is_some();
    let rows: Vec<(&str, Rule<'_>)> = vec![
        (
            "weighted split (table read, draw, pick in subset)",
            Box::new(|| {
                let r = routes.service("inventory").unwrap();
                let p = r.placement(&plain_headers, fastrand::f64());
                pool.pick_in(&[], p.map(|p| p.subset)).is_some()
            }),
        ),
        (
            "header match (table read, match, pick in subset)",
            Box::new(|| {
                let r = routes.service("inventory").unwrap();
                let p = r.placement(&canary_headers, fastrand::f64());
                pool.pick_in(&[], p.map(|p| p.subset)).is_some()
            }),
        ),
        ("zone preference", Box::new(|| zoned.pick(&[]).is_some())),
        (
            "method policy lookup",
            Box::new(|| {
                let r = routes.service("inventory").unwrap();
                black_box(r.policy_for(path));
                pool.pick(&[]).is_some()
            }),
        ),
    ];
    println!(
        "pick bench: {PICKS} picks per measurement among 8 endpoints (2 versions, 2 zones), \
         {REPS} interleaved repetitions per row (medians)"
    );
    println!(
        "{:<52} {:>10} {:>10} {:>22}",
        "rule", "plain ns", "rule ns", "extra ns (spread)"
    );
    for (name, rule) in rows {
        let (mut base, mut with, mut extra) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPS {
            let b = per_call(plain);
            let w = per_call(&rule);
            base.push(b);
            with.push(w);
            extra.push(w - b);
        }
        let lo = extra.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = extra.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{name:<52} {:>10.0} {:>10.0} {:>10.0} ({lo:.0}–{hi:.0})",
            median(&base),
            median(&with),
            median(&extra)
        );
    }
}
