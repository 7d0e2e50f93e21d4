//! The orders binary: reads configuration from the environment, binds the
//! listener (`WEFT_LISTEN`, default 127.0.0.1:7003) and serves until SIGTERM
//! or Ctrl-C; `weft-orders health` asks a running one whether it serves.

use weft_service::binary;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // `weft-orders health`: the container health check.
    if std::env::args().nth(1).as_deref() == Some("health") {
        use weft_proto::orders::v1::orders_service_server::SERVICE_NAME;
        return Ok(binary::health(weft_orders::NAME, SERVICE_NAME, &weft_orders::DEFAULTS).await);
    }
    let _telemetry = weft_service::telemetry::init(weft_orders::NAME)?;
    let config = weft_orders::OrdersConfig::from_env()?;
    let listener = binary::listen(weft_orders::DEFAULTS.listen).await?;
    weft_orders::run(listener, config, binary::shutdown_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
