//! The payments binary: reads configuration from the environment, binds the
//! listener (`WEFT_LISTEN`, default 127.0.0.1:7002) and serves until SIGTERM
//! or Ctrl-C.

use weft_service::binary;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = weft_service::telemetry::init(weft_payments::NAME)?;
    let config = weft_service::Config::from_env(weft_payments::NAME)?;
    let listener = binary::listen("127.0.0.1:7002").await?;
    weft_payments::run(listener, config, binary::shutdown_signal()).await?;
    Ok(())
}
