//! What one caller can hold of a server: caps on handshakes in progress and
//! on connections, a handshake timeout, HTTP/2 settings (streams per
//! connection, the guards against floods of reset streams, header list
//! size), keepalive and a maximum connection age with a grace period (which
//! also rebalances long-lived clients). Each has a default and is a setting
//! (`WEFT_*`, read by [`ServerLimits::from_lookup`]).

use std::time::Duration;

use tonic::transport::Server;

/// The server's limits. Every value is positive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may have
    /// open (`WEFT_MAX_STREAMS`, 256: the calls one connection may have in
    /// progress, so a client queues the rest itself rather than the server
    /// holding them).
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server has accepted
    /// them, the "rapid reset" guard; past it the connection gets GOAWAY
    /// (`WEFT_MAX_PENDING_RESETS`, 20, h2's own default).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because the client misbehaved on them
    /// before the connection gets GOAWAY (`WEFT_MAX_LOCAL_RESETS`, 1024,
    /// hyper's own default).
    pub max_local_error_reset_streams: usize,
    /// How often the server pings a connection (`WEFT_KEEPALIVE_MS`, 60 s)
    /// and how long it waits for the answer before closing it
    /// (`WEFT_KEEPALIVE_TIMEOUT_MS`, 20 s): a peer that vanished does not
    /// hold a connection.
    pub keepalive_interval: Duration,
    /// See `keepalive_interval`.
    pub keepalive_timeout: Duration,
    /// After this long a connection gets GOAWAY: no new calls on it, and
    /// its client reconnects, possibly to another instance
    /// (`WEFT_MAX_CONNECTION_AGE_S`, 30 min).
    pub max_connection_age: Duration,
    /// How long calls on an aged connection may still take; then it is
    /// closed (`WEFT_MAX_CONNECTION_AGE_GRACE_S`, 5 min). A long stream (a
    /// health watch) ends there, and its client watches again on a new
    /// connection.
    pub max_connection_age_grace: Duration,
    /// SETTINGS_MAX_HEADER_LIST_SIZE, bytes (`WEFT_MAX_HEADER_LIST_BYTES`,
    /// 16 KiB; gRPC's own default for metadata is 8 KiB).
    pub max_header_list_size: u32,
    /// TLS handshakes in progress; a new connection past it takes the
    /// place of the oldest, so stalled connections cannot lock real
    /// callers out (`WEFT_MAX_HANDSHAKES`, 128).
    pub max_handshakes: usize,
    /// Connections open (handshaking or established); past it a new one is
    /// closed at once (`WEFT_MAX_CONNECTIONS`, 4096).
    pub max_connections: usize,
    /// How long a peer may take to finish the TLS handshake
    /// (`WEFT_HANDSHAKE_TIMEOUT_MS`, 3 s).
    pub handshake_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(5 * 60),
            max_header_list_size: 16 * 1024,
            max_handshakes: 128,
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(3),
        }
    }
}

/// A limit that cannot be used: the variable and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct LimitError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl ServerLimits {
    /// The defaults with every `WEFT_*` limit that is set applied.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, LimitError> {
        let number = |name: &'static str| -> Result<Option<u64>, LimitError> {
            match lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
            {
                None => Ok(None),
                Some(v) => match v.parse::<u64>() {
                    Ok(0) => Err(LimitError {
                        name,
                        reason: "must be at least 1".into(),
                    }),
                    Ok(n) => Ok(Some(n)),
                    Err(e) => Err(LimitError {
                        name,
                        reason: e.to_string(),
                    }),
                },
            }
        };
        let small = |name: &'static str, n: u64| {
            u32::try_from(n).map_err(|_| LimitError {
                name,
                reason: format!("{n} is too large"),
            })
        };
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let mut l = Self::default();
        if let Some(n) = number("WEFT_MAX_STREAMS")? {
            l.max_concurrent_streams = small("WEFT_MAX_STREAMS", n)?;
        }
        if let Some(n) = number("WEFT_MAX_PENDING_RESETS")? {
            l.max_pending_accept_reset_streams = count(n);
        }
        if let Some(n) = number("WEFT_MAX_LOCAL_RESETS")? {
            l.max_local_error_reset_streams = count(n);
        }
        if let Some(n) = number("WEFT_KEEPALIVE_MS")? {
            l.keepalive_interval = Duration::from_millis(n);
        }
        if let Some(n) = number("WEFT_KEEPALIVE_TIMEOUT_MS")? {
            l.keepalive_timeout = Duration::from_millis(n);
        }
        if let Some(n) = number("WEFT_MAX_CONNECTION_AGE_S")? {
            l.max_connection_age = Duration::from_secs(n);
        }
        if let Some(n) = number("WEFT_MAX_CONNECTION_AGE_GRACE_S")? {
            l.max_connection_age_grace = Duration::from_secs(n);
        }
        if let Some(n) = number("WEFT_MAX_HEADER_LIST_BYTES")? {
            l.max_header_list_size = small("WEFT_MAX_HEADER_LIST_BYTES", n)?;
        }
        if let Some(n) = number("WEFT_MAX_HANDSHAKES")? {
            l.max_handshakes = count(n);
        }
        if let Some(n) = number("WEFT_MAX_CONNECTIONS")? {
            l.max_connections = count(n);
        }
        if let Some(n) = number("WEFT_HANDSHAKE_TIMEOUT_MS")? {
            l.handshake_timeout = Duration::from_millis(n);
        }
        Ok(l)
    }

    /// A tonic server builder with the HTTP/2 limits set (tonic leaves the
    /// reset guards and the stream limit unset otherwise, which turns
    /// hyper's own guards off). The age is tonic's graceful one (GOAWAY,
    /// then the calls in flight finish); the grace after it is kept by the
    /// connection itself ([`crate::incoming`]), because tonic's own grace
    /// closes an aged connection without a GOAWAY first.
    pub fn server(&self) -> Server {
        Server::builder()
            .max_concurrent_streams(Some(self.max_concurrent_streams))
            .http2_max_header_list_size(Some(self.max_header_list_size))
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams))
            .http2_max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .max_connection_age(self.max_connection_age)
    }

    /// When a connection accepted now is closed however busy it is: its
    /// age plus the grace.
    pub fn connection_lifetime(&self) -> Duration {
        self.max_connection_age
            .saturating_add(self.max_connection_age_grace)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn limits(vars: &[(&str, &str)]) -> Result<ServerLimits, LimitError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerLimits::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn unset_is_the_defaults_and_each_setting_applies() {
        assert_eq!(limits(&[]).unwrap(), ServerLimits::default());
        let l = limits(&[
            ("WEFT_MAX_STREAMS", "8"),
            ("WEFT_MAX_CONNECTIONS", "10"),
            ("WEFT_HANDSHAKE_TIMEOUT_MS", "500"),
            ("WEFT_MAX_CONNECTION_AGE_S", "60"),
        ])
        .unwrap();
        assert_eq!(l.max_concurrent_streams, 8);
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.handshake_timeout, Duration::from_millis(500));
        assert_eq!(l.max_connection_age, Duration::from_secs(60));
        assert_eq!(l.connection_lifetime(), Duration::from_secs(60 + 300));
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("WEFT_MAX_STREAMS", "0"),
            ("WEFT_MAX_STREAMS", "99999999999"),
            ("WEFT_KEEPALIVE_MS", "soon"),
            ("WEFT_MAX_HANDSHAKES", "-1"),
        ] {
            assert_eq!(limits(&[(name, value)]).unwrap_err().name, name, "{value}");
        }
    }
}
