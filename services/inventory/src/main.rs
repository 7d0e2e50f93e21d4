//! The inventory binary: reads configuration from the environment, binds the
//! listener (`WEFT_LISTEN`, default 127.0.0.1:7001) and serves until SIGTERM
//! or Ctrl-C; `weft-inventory health` asks a running one whether it serves.

use weft_service::binary;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // `weft-inventory health`: the container health check.
    if std::env::args().nth(1).as_deref() == Some("health") {
        use weft_proto::inventory::v1::inventory_service_server::SERVICE_NAME;
        return Ok(binary::health(
            weft_inventory::NAME,
            SERVICE_NAME,
            &weft_inventory::DEFAULTS,
        )
        .await);
    }
    let _telemetry = weft_service::telemetry::init(weft_inventory::NAME)?;
    let config = weft_service::Config::from_env(weft_inventory::NAME, &weft_inventory::DEFAULTS)?;
    let listener = binary::listen(weft_inventory::DEFAULTS.listen).await?;
    weft_inventory::run(listener, config, binary::shutdown_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
