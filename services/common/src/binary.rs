//! What each service's binary does around `run`: the listener from
//! `WEFT_LISTEN` and the shutdown signal (logging: see `telemetry`).

use tokio::net::TcpListener;

/// Binds `WEFT_LISTEN`, else `default`.
pub async fn listen(default: &str) -> std::io::Result<TcpListener> {
    let addr = std::env::var("WEFT_LISTEN").unwrap_or_else(|_| default.into());
    TcpListener::bind(&addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

/// Resolves on SIGTERM (how ECS and Kubernetes stop a task) or Ctrl-C.
pub async fn shutdown_signal() {
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
