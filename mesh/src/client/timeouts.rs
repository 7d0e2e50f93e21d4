//! Per-method default timeouts from configuration, written as
//! `METHOD=DURATION` pairs separated by commas, for example
//! `weft.inventory.v1.InventoryService/ReserveStock=2s,weft.payments.v1.PaymentsService/*=500ms`.
//! A method name ending in `*` covers every method it prefixes.

use std::time::Duration;

/// Why a timeout setting does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid method timeout {entry:?}: {reason}")]
pub struct TimeoutSettingError {
    /// The offending entry.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `100ms`, `2s`, `1m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// Method timeouts, exact paths before prefixes, longest prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodTimeouts {
    exact: Vec<(String, Duration)>,
    prefixes: Vec<(String, Duration)>,
}

impl MethodTimeouts {
    /// Parses the setting; an empty setting means no timeouts.
    pub fn parse(setting: &str) -> Result<Self, TimeoutSettingError> {
        let mut timeouts = Self::default();
        for entry in setting.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let err = |reason: &str| TimeoutSettingError {
                entry: entry.to_owned(),
                reason: reason.to_owned(),
            };
            let (method, duration) = entry
                .split_once('=')
                .ok_or_else(|| err("expected METHOD=DURATION"))?;
            let duration = parse_duration(duration)
                .ok_or_else(|| err("durations look like 250ms, 2s or 1m"))?;
            if duration.is_zero() {
                return Err(err("a timeout must be longer than zero"));
            }
            let method = format!("/{}", method.trim().trim_start_matches('/'));
            if !method.contains('/') || method.len() < 3 {
                return Err(err("methods look like package.Service/Method"));
            }
            match method.strip_suffix('*') {
                Some(prefix) => timeouts.prefixes.push((prefix.to_owned(), duration)),
                None if method[1..].contains('/') => timeouts.exact.push((method, duration)),
                None => return Err(err("methods look like package.Service/Method")),
            }
        }
        timeouts
            .prefixes
            .sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(timeouts)
    }

    /// The timeout for `path` (`/package.Service/Method`), if one is set.
    pub fn get(&self, path: &str) -> Option<Duration> {
        self.exact
            .iter()
            .find(|(m, _)| m == path)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| path.starts_with(p.as_str()))
            })
            .map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_methods_win_over_prefixes_and_longer_prefixes_over_shorter() {
        let t = MethodTimeouts::parse(
            "weft.payments.v1.PaymentsService/*=500ms, weft.payments.v1.PaymentsService/Capture=2s, weft.*=10s",
        )
        .unwrap();
        assert_eq!(
            t.get("/weft.payments.v1.PaymentsService/Capture"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            t.get("/weft.payments.v1.PaymentsService/Void"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            t.get("/weft.orders.v1.OrdersService/GetOrder"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(t.get("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            MethodTimeouts::parse("").unwrap(),
            MethodTimeouts::default()
        );
    }

    #[test]
    fn bad_settings_are_explained() {
        for (bad, says) in [
            ("a.B/C", "METHOD=DURATION"),
            ("a.B/C=soon", "durations"),
            ("a.B/C=0s", "longer than zero"),
            ("Nope=1s", "package.Service/Method"),
        ] {
            let err = MethodTimeouts::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
