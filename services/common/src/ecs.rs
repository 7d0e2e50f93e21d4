//! What a task on ECS learns about itself from the task metadata endpoint
//! (v4): its task id, the instance id ECS registers in Cloud Map, and its
//! Availability Zone.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The variable ECS sets in every container of a task (Fargate 1.4+).
pub const METADATA_VARIABLE: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The facts of the running task that Weft uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsTask {
    /// The last part of the task ARN: the id ECS registers the task under
    /// in Cloud Map, unique across the cluster's tasks.
    pub task_id: String,
    /// The task's Availability Zone, when ECS reports one.
    pub zone: Option<String>,
}

/// Why the metadata could not be read.
#[derive(Debug, thiserror::Error)]
#[error("ECS task metadata at {uri}: {reason}")]
pub struct MetadataError {
    uri: String,
    reason: String,
}

/// Reads `<uri>/task`, trying a few times within about five seconds (the
/// endpoint is local to the task, so a failure is an agent still starting).
pub fn task(uri: &str) -> Result<EcsTask, MetadataError> {
    let error = |reason: String| MetadataError {
        uri: uri.to_owned(),
        reason,
    };
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 * attempt));
        }
        match get(uri, "/task").and_then(|body| parse(&body)) {
            Ok(task) => return Ok(task),
            Err(e) => last = e,
        }
    }
    Err(error(last))
}

/// One HTTP/1.0 GET against a plain HTTP endpoint on this host or a
/// link-local address (the metadata endpoint, the metrics listener): a
/// request line and a close-delimited body are all it takes, so no HTTP
/// client library is pulled into every service. Anything but 200 is an
/// error.
pub(crate) fn get(uri: &str, path: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// endpoints are served by ECS".to_owned())?;
    let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let target = format!("/{}{path}", base.trim_end_matches('/'));
    let target = target.replace("//", "/");
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    // The metadata document is a few kilobytes; the bound keeps a broken
    // endpoint from growing memory.
    stream
        .take(1 << 20)
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| "malformed HTTP response".to_owned())?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("HTTP status {status}"));
    }
    Ok(body.to_owned())
}

fn parse(body: &str) -> Result<EcsTask, String> {
    let doc: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let arn = doc
        .get("TaskARN")
        .and_then(|v| v.as_str())
        .ok_or_else(|| "no TaskARN in the task metadata".to_owned())?;
    let task_id = arn
        .rsplit('/')
        .next()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| format!("task ARN {arn:?} has no id"))?;
    let zone = doc
        .get("AvailabilityZone")
        .and_then(|v| v.as_str())
        .filter(|z| !z.is_empty())
        .map(str::to_owned);
    Ok(EcsTask {
        task_id: task_id.to_owned(),
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_task_id_and_zone_from_a_fargate_document() {
        let body = r#"{"Cluster":"arn:aws:ecs:eu-west-1:123456789012:cluster/weft",
            "TaskARN":"arn:aws:ecs:eu-west-1:123456789012:task/weft/0b69d5c0d0ba4d4c9a5e8e0f6a0c1d2e",
            "AvailabilityZone":"eu-west-1b","LaunchType":"FARGATE"}"#;
        assert_eq!(
            parse(body).unwrap(),
            EcsTask {
                task_id: "0b69d5c0d0ba4d4c9a5e8e0f6a0c1d2e".into(),
                zone: Some("eu-west-1b".into()),
            }
        );
        assert!(parse(r#"{"Cluster":"x"}"#).is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn fetches_from_a_live_endpoint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // The whole request head, so closing leaves nothing unread (an
            // unread byte makes the close a reset, which the client may see
            // before the answer).
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed mid-request");
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"TaskARN\":\"arn:aws:ecs:r:1:task/c/abc123\"}",
            )
            .unwrap();
            request
        });
        let task = task(&format!("http://{addr}/v4/some-id")).unwrap();
        assert_eq!(task.task_id, "abc123");
        assert_eq!(task.zone, None);
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /v4/some-id/task HTTP/1.0")
        );
    }
}
