//! `weft ls` and `weft health`: the instances discovery lists for each
//! service, with health and attributes; and what each instance's
//! grpc.health.v1 says when asked directly.

use std::time::Duration;

use anyhow::Result;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::target::{Mesh, MeshArgs};

/// The services named, or, with none named, every service discovery knows.
async fn services(mesh: &Mesh, given: &[String]) -> Result<Vec<String>> {
    if given.is_empty() {
        mesh.services().await
    } else {
        Ok(given.to_vec())
    }
}

/// Prints one line per instance.
pub async fn ls(args: &MeshArgs, given: &[String]) -> Result<()> {
    let mesh = Mesh::connect(args).await?;
    println!(
        "{:<10} {:<22} {:<22} {:<9} attributes",
        "SERVICE", "INSTANCE", "ADDRESS", "HEALTH"
    );
    for service in services(&mesh, given).await? {
        let snapshot = mesh.instances(&service).await?;
        if let Some(e) = &snapshot.last_error {
            println!("{service:<10} (discovery error: {e})");
        }
        if snapshot.endpoints.is_empty() {
            println!("{service:<10} (no instances)");
        }
        for e in snapshot.endpoints.iter() {
            let attributes: Vec<String> = e
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "{service:<10} {:<22} {:<22} {:<9} {}",
                e.id,
                e.addr.to_string(),
                if e.healthy { "healthy" } else { "unhealthy" },
                attributes.join(",")
            );
        }
    }
    Ok(())
}

/// Asks every instance's grpc.health.v1 directly; fails when one is not
/// SERVING.
pub async fn health(args: &MeshArgs, given: &[String]) -> Result<()> {
    let mesh = Mesh::connect(args).await?;
    let mut bad = 0;
    for service in services(&mesh, given).await? {
        let snapshot = mesh.instances(&service).await?;
        for e in snapshot.endpoints.iter() {
            let tls = weft_mesh::client_config(mesh.store()?, mesh.expected(&service)?)?;
            let channel = weft_mesh::mtls_channel(e.addr, tls)?;
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                HealthClient::new(channel).check(HealthCheckRequest::default()),
            )
            .await;
            let status = match answer {
                Ok(Ok(r)) => format!("{:?}", r.into_inner().status()),
                Ok(Err(s)) => format!("error: {:?} {}", s.code(), s.message()),
                Err(_) => "error: no answer within 5 s".to_owned(),
            };
            if status != "Serving" {
                bad += 1;
            }
            println!(
                "{service:<10} {:<22} {:<22} {status}",
                e.id,
                e.addr.to_string()
            );
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} instance(s) not serving");
    }
    Ok(())
}
