//! Plain tonic servers over Weft's mTLS for tests and benchmarks: stand-ins
//! (health-only, failing, slow) whose behaviour the test controls, and
//! [`get_stock_only!`](crate::get_stock_only) for stand-in inventories.

use std::net::SocketAddr;

use anyhow::Result;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use weft_mesh::{CertStore, MeshConn, ServerLimits, server_config, tls_incoming};

/// The connections a test's own tonic `Server` serves with
/// `serve_with_incoming`.
pub type Incoming = ReceiverStream<std::io::Result<MeshConn>>;

/// A listener on 127.0.0.1, port 0, taking mTLS connections as `store`'s
/// identity within `limits`: its address, and the connections, for a tonic
/// `Server` with the layers the test chooses.
pub async fn mtls_listener(
    store: &CertStore,
    limits: &ServerLimits,
) -> Result<(SocketAddr, Incoming)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok((
        listener.local_addr()?,
        mtls_incoming(listener, store, limits)?,
    ))
}

/// The mTLS connections `listener` takes as `store`'s identity within
/// `limits` (a listener on an address the test chose, such as one a stopped
/// server had).
pub fn mtls_incoming(
    listener: tokio::net::TcpListener,
    store: &CertStore,
    limits: &ServerLimits,
) -> Result<Incoming> {
    Ok(tls_incoming(listener, server_config(store)?, store, limits))
}

/// Serves `routes` over mTLS as `store`'s identity on 127.0.0.1, port 0, in a
/// task of its own, with the default limits; returns the address.
pub async fn serve_mtls(store: &CertStore, routes: Routes) -> Result<SocketAddr> {
    serve_mtls_limited(store, routes, &ServerLimits::default()).await
}

/// [`serve_mtls`] within `limits`.
pub async fn serve_mtls_limited(
    store: &CertStore,
    routes: Routes,
    limits: &ServerLimits,
) -> Result<SocketAddr> {
    let (addr, incoming) = mtls_listener(store, limits).await?;
    tokio::spawn(
        limits
            .server()
            .add_routes(routes)
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}

/// Implements `weft.inventory.v1.InventoryService` for `$ty` with GetStock
/// as `$body` (`$this` the value, `$request` the request) and every other
/// method UNIMPLEMENTED: the stand-in inventories of tests.
#[macro_export]
macro_rules! get_stock_only {
    ($ty:ty, |$this:ident, $request:ident| $body:block) => {
        #[tonic::async_trait]
        impl weft_proto::inventory::v1::inventory_service_server::InventoryService for $ty {
            async fn get_stock(
                &self,
                $request: tonic::Request<weft_proto::inventory::v1::GetStockRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::GetStockResponse>, tonic::Status>
            {
                let $this = self;
                $body
            }
            async fn create_product(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::CreateProductRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::CreateProductResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn get_product(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::GetProductRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::GetProductResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn list_products(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::ListProductsRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::ListProductsResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn adjust_stock(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::AdjustStockRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::AdjustStockResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn reserve_stock(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::ReserveStockRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::ReserveStockResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn commit_reservation(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::CommitReservationRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::CommitReservationResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn release_reservation(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::ReleaseReservationRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::ReleaseReservationResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn return_reservation(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::ReturnReservationRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::ReturnReservationResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
            async fn get_reservation(
                &self,
                _: tonic::Request<weft_proto::inventory::v1::GetReservationRequest>,
            ) -> Result<tonic::Response<weft_proto::inventory::v1::GetReservationResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
        }
    };
}
