//! What each service's binary does around `run`: the listener from
//! `WEFT_LISTEN`, the shutdown signal, and the `health` subcommand that
//! container health checks run (logging: see `telemetry`).

use tokio::net::TcpListener;

/// Binds `WEFT_LISTEN`, else `default`.
pub async fn listen(default: &str) -> std::io::Result<TcpListener> {
    let addr = std::env::var("WEFT_LISTEN").unwrap_or_else(|_| default.into());
    TcpListener::bind(&addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

/// The supervisor that started this process (`weft up` sets it): when it
/// is gone, the process stops too.
const SUPERVISOR: &str = "WEFT_SUPERVISOR_PID";

/// Resolves on SIGTERM (how ECS and Kubernetes stop a task) or Ctrl-C; and,
/// for a process started by a supervisor that set `WEFT_SUPERVISOR_PID`
/// (`weft up`), when that supervisor ends, however it ends (the kernel sends
/// SIGTERM then), so a killed `weft up` leaves no instance running.
pub async fn shutdown_signal() {
    if supervisor_gone() {
        tracing::warn!("the supervisor that started this process is gone: stopping");
        return;
    }
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Asks for SIGTERM when the parent process ends, if the parent is the
/// supervisor named in `WEFT_SUPERVISOR_PID`; true when it has already
/// ended (the request would come too late: the process was re-parented).
#[cfg(target_os = "linux")]
fn supervisor_gone() -> bool {
    let Some(supervisor) = std::env::var(SUPERVISOR)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return false;
    };
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        tracing::warn!(error = %e, "cannot ask to stop with the supervisor");
    }
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    parent != Some(supervisor)
}

#[cfg(not(target_os = "linux"))]
fn supervisor_gone() -> bool {
    let _ = SUPERVISOR;
    false
}

/// `<binary> health [--ready]`: asks the server on `WEFT_LISTEN` (else
/// `defaults.listen`; an unspecified address is asked on 127.0.0.1) whether it is
/// alive (the [`LIVENESS`](crate::serve::LIVENESS) entry: ready once since
/// start, whatever its database does now) or, with `--ready`, whether
/// `grpc_service` is SERVING (ready now), over mTLS with the server's own
/// certificate (or plaintext, as configured); exits 0 when it is, 1
/// otherwise, within 3 s. Container health checks ask for liveness. With
/// an identity from Private CA the check has no certificate of its own
/// (issuing one per check would cost a CA call every few seconds), so it
/// asks the metrics listener's `/live` or `/ready` instead, which answer
/// the same.
pub async fn health(
    name: &str,
    grpc_service: &str,
    defaults: &crate::config::Defaults,
) -> std::process::ExitCode {
    let ready = std::env::args().skip(2).any(|a| a == "--ready");
    let grpc_service = if ready {
        grpc_service
    } else {
        crate::serve::LIVENESS
    };
    let outcome = if std::env::var_os("WEFT_PCA_ARN").is_some() {
        check_http(defaults.metrics, ready).await
    } else {
        check(name, grpc_service, defaults.listen).await
    };
    match outcome {
        Ok(()) => {
            println!("{grpc_service}: SERVING");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{grpc_service}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `GET /live` (or `/ready`) on the metrics listener.
async fn check_http(default_metrics: &str, ready: bool) -> Result<(), String> {
    let mut addr = crate::config::metrics_addr_from_env(default_metrics)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "WEFT_METRICS_ADDR is off: nothing to ask".to_owned())?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = if ready { "/ready" } else { "/live" };
    let uri = format!("http://{addr}");
    tokio::task::spawn_blocking(move || crate::ecs::get(&uri, path).map(|_| ()))
        .await
        .map_err(|e| e.to_string())?
}

async fn check(name: &str, grpc_service: &str, default: &str) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let listen = std::env::var("WEFT_LISTEN").unwrap_or_else(|_| default.into());
    let mut addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("WEFT_LISTEN {listen:?}: {e}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let channel = match crate::config::transport_from_env(name).map_err(|e| e.to_string())? {
        crate::Transport::Mtls { identity, .. } => {
            let store = identity
                .open(std::time::Duration::from_secs(3600))
                .await
                .map_err(|e| e.to_string())?;
            // The server is this service: it must prove the same identity.
            let own = store.current().id;
            let tls = weft_mesh::client_config(&store, own).map_err(|e| e.to_string())?;
            weft_mesh::mtls_channel(addr, tls).map_err(|e| e.to_string())?
        }
        crate::Transport::Plaintext => {
            weft_mesh::plaintext_channel(addr).map_err(|e| e.to_string())?
        }
    };
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        HealthClient::new(channel).check(HealthCheckRequest {
            service: grpc_service.to_owned(),
        }),
    )
    .await
    .map_err(|_| format!("no answer from {addr} within 3 s"))?
    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{other:?}")),
    }
}
