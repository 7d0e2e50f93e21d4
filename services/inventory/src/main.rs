//! The inventory binary: reads configuration from the environment, binds the
//! listener (`WEFT_LISTEN`, default 127.0.0.1:7001) and serves until SIGTERM
//! or Ctrl-C.

use weft_service::binary;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = weft_service::telemetry::init(weft_inventory::NAME)?;
    let config = weft_service::Config::from_env(weft_inventory::NAME)?;
    let listener = binary::listen("127.0.0.1:7001").await?;
    weft_inventory::run(listener, config, binary::shutdown_signal()).await?;
    Ok(())
}
