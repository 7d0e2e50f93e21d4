//! The payments binary: reads configuration from the environment, binds the
//! listener (`WEFT_LISTEN`, default 127.0.0.1:7002) and serves until SIGTERM
//! or Ctrl-C; `weft-payments health` asks a running one whether it serves.

use weft_service::binary;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // `weft-payments health`: the container health check.
    if std::env::args().nth(1).as_deref() == Some("health") {
        use weft_proto::payments::v1::payments_service_server::SERVICE_NAME;
        return Ok(
            binary::health(weft_payments::NAME, SERVICE_NAME, &weft_payments::DEFAULTS).await,
        );
    }
    let _telemetry = weft_service::telemetry::init(weft_payments::NAME)?;
    let config = weft_service::Config::from_env(weft_payments::NAME, &weft_payments::DEFAULTS)?;
    let listener = binary::listen(weft_payments::DEFAULTS.listen).await?;
    weft_payments::run(listener, config, binary::shutdown_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
