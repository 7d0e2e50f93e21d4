//! The on-disk form of a local registry record: one small text file per
//! instance, written atomically (temporary file, then rename), so readers
//! never see half a record and concurrent writers never clash.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::DiscoveryError;
use crate::types::Endpoint;

const MAGIC: &str = "weft-instance 1";
const EXTENSION: &str = "instance";

/// Checks a service name, instance id or attribute key: 1 to 128 of
/// letters, digits, '.', '_' and '-' (so it is a safe file name).
pub fn check_name(kind: &str, value: &str) -> Result<(), DiscoveryError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::InvalidRegistration(format!(
            "{kind} {value:?} must be 1 to 128 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The directory of one service's records.
pub fn service_dir(root: &Path, service: &str) -> PathBuf {
    root.join(service)
}

/// The file of one instance.
pub fn record_path(root: &Path, service: &str, id: &str) -> PathBuf {
    service_dir(root, service).join(format!("{id}.{EXTENSION}"))
}

/// Whether a directory entry is a record (and not a temporary file).
pub fn is_record(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == EXTENSION)
}

/// Renders an endpoint as record text.
pub fn render(endpoint: &Endpoint) -> String {
    let mut out = format!(
        "{MAGIC}\naddr={}\nhealthy={}\n",
        endpoint.addr, endpoint.healthy
    );
    for (k, v) in &endpoint.attributes {
        out.push_str(&format!("attr.{k}={v}\n"));
    }
    out
}

/// Parses record text; the id comes from the file name.
pub fn parse(id: &str, text: &str) -> Result<Endpoint, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err("not a weft instance record".into());
    }
    let mut addr: Option<SocketAddr> = None;
    let mut healthy = true;
    let mut attributes = BTreeMap::new();
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        match key {
            "addr" => addr = Some(value.parse().map_err(|e| format!("addr: {e}"))?),
            "healthy" => healthy = value == "true",
            _ => {
                if let Some(attr) = key.strip_prefix("attr.") {
                    attributes.insert(attr.to_owned(), value.to_owned());
                }
            }
        }
    }
    Ok(Endpoint {
        id: id.to_owned(),
        addr: addr.ok_or("missing addr")?,
        attributes,
        healthy,
    })
}

/// Writes `text` to `path` atomically.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), DiscoveryError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .ok_or_else(|| DiscoveryError::Io(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let endpoint = Endpoint {
            id: "i-1".into(),
            addr: "127.0.0.1:7001".parse().unwrap(),
            attributes: [("version".to_string(), "1.2".to_string())].into(),
            healthy: false,
        };
        assert_eq!(parse("i-1", &render(&endpoint)).unwrap(), endpoint);
        assert!(parse("x", "garbage").is_err());
        assert!(parse("x", "weft-instance 1\nhealthy=true\n").is_err());
    }

    #[test]
    fn names_are_safe_file_names() {
        assert!(check_name("id", "task-1.a_b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_name("id", bad).is_err(), "{bad}");
        }
    }
}
