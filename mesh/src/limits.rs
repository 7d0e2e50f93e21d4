//! What one caller can hold of a server: caps on handshakes in progress and
//! on connections and a handshake timeout (on by default), and HTTP/2
//! settings (streams per connection, the guards against floods of reset
//! streams, header list size), keepalive and a maximum connection age
//! (which also rebalances long-lived clients). Each is a setting (`WEFT_*`,
//! read by [`ServerLimits::from_lookup`]). The HTTP/2 ones are off unless
//! set: with them on by default, the rehearsal's rolling deployment saw
//! calls to payments stall until their deadline, a cause not yet found.

use std::time::Duration;

use tonic::transport::Server;

/// The server's limits; `None` leaves tonic's behaviour. Every value is positive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may have
    /// open (`WEFT_MAX_STREAMS`).
    pub max_concurrent_streams: Option<u32>,
    /// Streams a client may open and reset before the server has accepted
    /// them, the "rapid reset" guard; past it the connection gets GOAWAY
    /// (`WEFT_MAX_PENDING_RESETS`; h2's own default, 20, when unset).
    pub max_pending_accept_reset_streams: Option<usize>,
    /// Streams the server may reset because the client misbehaved on them
    /// before the connection gets GOAWAY (`WEFT_MAX_LOCAL_RESETS`).
    pub max_local_error_reset_streams: Option<usize>,
    /// How often the server pings a connection (`WEFT_KEEPALIVE_MS`)
    /// and how long it waits for the answer before closing it
    /// (`WEFT_KEEPALIVE_TIMEOUT_MS`): a peer that vanished does not
    /// hold a connection.
    pub keepalive_interval: Option<Duration>,
    /// See `keepalive_interval`.
    pub keepalive_timeout: Option<Duration>,
    /// After this long a connection gets GOAWAY and its client reconnects,
    /// possibly to another instance (`WEFT_MAX_CONNECTION_AGE_S`).
    pub max_connection_age: Option<Duration>,
    /// How long calls on an aged connection may take to finish
    /// (`WEFT_MAX_CONNECTION_AGE_GRACE_S`; with it, tonic closes an aged connection after the grace instead of sending GOAWAY at the age).
    pub max_connection_age_grace: Option<Duration>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE, bytes (`WEFT_MAX_HEADER_LIST_BYTES`;
    /// gRPC's own default for metadata is 8 KiB).
    pub max_header_list_size: Option<u32>,
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
            max_concurrent_streams: None,
            max_pending_accept_reset_streams: None,
            max_local_error_reset_streams: None,
            keepalive_interval: None,
            keepalive_timeout: None,
            max_connection_age: None,
            max_connection_age_grace: None,
            max_header_list_size: None,
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
            l.max_concurrent_streams = Some(small("WEFT_MAX_STREAMS", n)?);
        }
        if let Some(n) = number("WEFT_MAX_PENDING_RESETS")? {
            l.max_pending_accept_reset_streams = Some(count(n));
        }
        if let Some(n) = number("WEFT_MAX_LOCAL_RESETS")? {
            l.max_local_error_reset_streams = Some(count(n));
        }
        if let Some(n) = number("WEFT_KEEPALIVE_MS")? {
            l.keepalive_interval = Some(Duration::from_millis(n));
        }
        if let Some(n) = number("WEFT_KEEPALIVE_TIMEOUT_MS")? {
            l.keepalive_timeout = Some(Duration::from_millis(n));
        }
        if let Some(n) = number("WEFT_MAX_CONNECTION_AGE_S")? {
            l.max_connection_age = Some(Duration::from_secs(n));
        }
        if let Some(n) = number("WEFT_MAX_CONNECTION_AGE_GRACE_S")? {
            l.max_connection_age_grace = Some(Duration::from_secs(n));
        }
        if let Some(n) = number("WEFT_MAX_HEADER_LIST_BYTES")? {
            l.max_header_list_size = Some(small("WEFT_MAX_HEADER_LIST_BYTES", n)?);
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
    /// hyper's own guards off).
    pub fn server(&self) -> Server {
        let mut server = Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_header_list_size(self.max_header_list_size)
            .http2_keepalive_interval(self.keepalive_interval)
            .http2_keepalive_timeout(self.keepalive_timeout);
        if self.max_pending_accept_reset_streams.is_some() {
            server = server
                .http2_max_pending_accept_reset_streams(self.max_pending_accept_reset_streams);
        }
        if self.max_local_error_reset_streams.is_some() {
            server = server.http2_max_local_error_reset_streams(self.max_local_error_reset_streams);
        }
        if let Some(age) = self.max_connection_age {
            server = server.max_connection_age(age);
        }
        if let Some(grace) = self.max_connection_age_grace {
            server = server.max_connection_age_grace(grace);
        }
        server
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
        assert_eq!(l.max_concurrent_streams, Some(8));
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.handshake_timeout, Duration::from_millis(500));
        assert_eq!(l.max_connection_age, Some(Duration::from_secs(60)));
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
