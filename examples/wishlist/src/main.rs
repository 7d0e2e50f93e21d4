//! The wishlist binary: reads configuration from the environment, binds the
//! listener (`WEFT_LISTEN`, default 127.0.0.1:7004) and serves until SIGTERM
//! or Ctrl-C; `weft-wishlist health` asks a running one whether it serves.

use weft_service::binary;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // `weft-wishlist health`: the container health check.
    if std::env::args().nth(1).as_deref() == Some("health") {
        use weft_wishlist::pb::wishlist_service_server::SERVICE_NAME;
        return Ok(
            binary::health(weft_wishlist::NAME, SERVICE_NAME, &weft_wishlist::DEFAULTS).await,
        );
    }
    let _telemetry = weft_service::telemetry::init(weft_wishlist::NAME)?;
    let config = weft_wishlist::WishlistConfig::from_env()?;
    let listener = binary::listen(weft_wishlist::DEFAULTS.listen).await?;
    weft_wishlist::run(listener, config, binary::shutdown_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
