//! The live status of `weft up`'s instances: requests per second and
//! latency quantiles over the last interval, read from each instance's own
//! metrics (its API calls only: health checks and reflection left out).

use std::collections::BTreeMap;

/// Cumulative figures of one instance at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Calls answered.
    pub calls: f64,
    /// Calls at or under each latency bound (seconds), cumulative.
    pub buckets: BTreeMap<u64, f64>,
}

/// The labels of a sample line.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// Sums the server-side figures of API calls in a Prometheus text scrape.
pub fn totals(text: &str) -> Totals {
    let mut t = Totals::default();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        if label(labels, "grpc_service").is_none_or(|s| s.starts_with("grpc.")) {
            continue;
        }
        match name {
            "weft_server_request_duration_seconds_count" => t.calls += value,
            "weft_server_request_duration_seconds_bucket" => {
                let Some(le) = label(labels, "le").and_then(|le| le.parse::<f64>().ok()) else {
                    continue;
                };
                // Microseconds as the key: an ordered map over floats.
                *t.buckets.entry((le * 1e6) as u64).or_default() += value;
            }
            _ => {}
        }
    }
    t
}

/// One instance's rate and latency over an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Calls per second.
    pub rate: f64,
    /// The latency bound at or under which half the calls finished, in ms.
    pub p50_ms: Option<f64>,
    /// The same for 99%.
    pub p99_ms: Option<f64>,
}

/// The figures between two scrapes `seconds` apart.
pub fn window(before: &Totals, after: &Totals, seconds: f64) -> Window {
    let calls = (after.calls - before.calls).max(0.0);
    let quantile = |q: f64| {
        if calls <= 0.0 {
            return None;
        }
        after.buckets.iter().find_map(|(bound, n)| {
            let done = n - before.buckets.get(bound).copied().unwrap_or(0.0);
            (done >= q * calls).then_some(*bound as f64 / 1000.0)
        })
    };
    Window {
        rate: if seconds > 0.0 { calls / seconds } else { 0.0 },
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
    }
}

/// A latency bound for the table.
pub fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v.is_infinite() || v > 10_000.0 => ">10s".to_owned(),
        Some(v) => format!("≤{v}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"weft_server_request_duration_seconds_count{grpc_service="weft.orders.v1.OrdersService",grpc_method="PlaceOrder",peer="p"} 10
weft_server_request_duration_seconds_bucket{le="0.005",grpc_service="weft.orders.v1.OrdersService",grpc_method="PlaceOrder",peer="p"} 4
weft_server_request_duration_seconds_bucket{le="0.01",grpc_service="weft.orders.v1.OrdersService",grpc_method="PlaceOrder",peer="p"} 9
weft_server_request_duration_seconds_bucket{le="+Inf",grpc_service="weft.orders.v1.OrdersService",grpc_method="PlaceOrder",peer="p"} 10
weft_server_request_duration_seconds_count{grpc_service="grpc.health.v1.Health",grpc_method="Check",peer="p"} 99
"#;

    #[test]
    fn rates_and_quantiles_over_a_window() {
        let after = totals(SCRAPE);
        assert_eq!(after.calls, 10.0);
        let w = window(&Totals::default(), &after, 2.0);
        assert_eq!(w.rate, 5.0);
        assert_eq!(w.p50_ms, Some(10.0));
        assert_eq!(ms(w.p99_ms), ">10s");
        assert_eq!(ms(w.p50_ms), "≤10ms");
        let idle = window(&after, &after, 2.0);
        assert_eq!((idle.rate, idle.p50_ms), (0.0, None));
    }
}
