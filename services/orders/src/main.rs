//! The orders binary: reads configuration from the environment, binds the
//! listener (`WEFT_LISTEN`, default 127.0.0.1:7003) and serves until SIGTERM
//! or Ctrl-C.

use weft_service::binary;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = weft_service::telemetry::init(weft_orders::NAME)?;
    let config = weft_orders::OrdersConfig::from_env()?;
    let listener = binary::listen("127.0.0.1:7003").await?;
    weft_orders::run(listener, config, binary::shutdown_signal()).await?;
    Ok(())
}
