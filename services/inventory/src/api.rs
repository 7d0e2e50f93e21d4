//! The gRPC edge of inventory: validates each request, runs it against the
//! store, and converts the outcome to the response or a status.

use tonic::{Request, Response, Status};
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_server::InventoryService;

use crate::convert;
use crate::domain::{NewProduct, Transition};
use crate::store::Store;
use crate::validate;
use weft_service::{IdempotencyKey, caller_of};

/// Implements `weft.inventory.v1.InventoryService` over a [`Store`].
#[derive(Debug, Clone)]
pub struct InventoryApi {
    store: Store,
}

impl InventoryApi {
    /// Serves calls from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The key and a digest of everything else in the request.
fn keyed<M: prost::Message + Clone>(
    caller: &str,
    method: &str,
    request: &M,
    key: &str,
    clear_key: impl FnOnce(&mut M),
) -> Result<IdempotencyKey, Status> {
    IdempotencyKey::of(caller, method, request, key, clear_key)
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = keyed(&caller, "CreateProduct", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::sku("sku", &req.sku)?;
        validate::text("name", &req.name, 200)?;
        let unit_price = validate::price("unit_price", req.unit_price.as_ref())?;
        if !(0..=i64::from(u32::MAX)).contains(&req.initial_stock) {
            return Err(Status::invalid_argument(
                "initial_stock: must be between 0 and 4294967295",
            ));
        }
        let new = NewProduct {
            sku: req.sku,
            name: req.name,
            unit_price,
            initial_stock: req.initial_stock,
        };
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let (product, stock) = tx.create_product(&new).await?;
                Ok(pb::CreateProductResponse {
                    product: Some(convert::product(&product)),
                    stock: Some(convert::stock(&product.sku, &stock)),
                })
            })
            .await
            .map_err(convert::status)?;
        Ok(Response::new(response))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let req = request.into_inner();
        validate::sku("sku", &req.sku)?;
        let (product, stock) = self
            .store
            .product(&req.sku)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::GetProductResponse {
            stock: Some(convert::stock(&product.sku, &stock)),
            product: Some(convert::product(&product)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let req = request.into_inner();
        let limit = validate::page_size(req.page_size)?;
        let after = validate::decode_page_token(&req.page_token)?;
        // One extra row tells whether another page follows.
        let mut products = self
            .store
            .products(&after, limit + 1)
            .await
            .map_err(convert::status)?;
        let more = products.len() as i64 > limit;
        products.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_page_token = match (more, products.last()) {
            (true, Some(last)) => validate::encode_page_token(&last.sku),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListProductsResponse {
            products: products.iter().map(convert::product).collect(),
            next_page_token,
        }))
    }

    async fn get_stock(
        &self,
        request: Request<pb::GetStockRequest>,
    ) -> Result<Response<pb::GetStockResponse>, Status> {
        let req = request.into_inner();
        if req.skus.is_empty() {
            return Err(Status::invalid_argument("skus: must name at least one SKU"));
        }
        if req.skus.len() > validate::MAX_SKUS {
            return Err(Status::invalid_argument(format!(
                "skus: must name at most {} SKUs",
                validate::MAX_SKUS
            )));
        }
        for (i, sku) in req.skus.iter().enumerate() {
            validate::sku(&format!("skus[{i}]"), sku)?;
            if req.skus[..i].contains(sku) {
                return Err(Status::invalid_argument(format!(
                    "skus[{i}]: appears more than once"
                )));
            }
        }
        let levels = self.store.stock(&req.skus).await.map_err(convert::status)?;
        Ok(Response::new(pb::GetStockResponse {
            stock: levels
                .iter()
                .map(|(sku, s)| convert::stock(sku, s))
                .collect(),
        }))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = keyed(&caller, "AdjustStock", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::sku("sku", &req.sku)?;
        if req.delta == 0 || req.delta.unsigned_abs() > validate::MAX_QUANTITY.unsigned_abs() {
            return Err(Status::invalid_argument(format!(
                "delta: must be non-zero and between -{0} and {0}",
                validate::MAX_QUANTITY
            )));
        }
        validate::optional_text("reason", &req.reason, 200)?;
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let stock = tx.adjust_stock(&req.sku, req.delta, &req.reason).await?;
                Ok(pb::AdjustStockResponse {
                    stock: Some(convert::stock(&req.sku, &stock)),
                })
            })
            .await
            .map_err(convert::status)?;
        Ok(Response::new(response))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = keyed(&caller, "ReserveStock", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::text("order_id", &req.order_id, 128)?;
        let lines = validate::lines(&req.lines)?;
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let reservation = tx.reserve(&req.order_id, &lines).await?;
                Ok(pb::ReserveStockResponse {
                    reservation: Some(convert::reservation(&reservation)),
                })
            })
            .await
            .map_err(convert::status)?;
        Ok(Response::new(response))
    }

    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let reservation = self
            .transition(
                &caller,
                "CommitReservation",
                &req.idempotency_key,
                &req.reservation_id,
                Transition::Commit,
            )
            .await?;
        Ok(Response::new(pb::CommitReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let reservation = self
            .transition(
                &caller,
                "ReleaseReservation",
                &req.idempotency_key,
                &req.reservation_id,
                Transition::Release,
            )
            .await?;
        Ok(Response::new(pb::ReleaseReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn return_reservation(
        &self,
        request: Request<pb::ReturnReservationRequest>,
    ) -> Result<Response<pb::ReturnReservationResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let reservation = self
            .transition(
                &caller,
                "ReturnReservation",
                &req.idempotency_key,
                &req.reservation_id,
                Transition::Return,
            )
            .await?;
        Ok(Response::new(pb::ReturnReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        let req = request.into_inner();
        validate::id("reservation_id", &req.reservation_id)?;
        let reservation = self
            .store
            .reservation(&req.reservation_id)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::GetReservationResponse {
            reservation: Some(convert::reservation(&reservation)),
        }))
    }
}

impl InventoryApi {
    /// The three reservation transitions share their request shape.
    async fn transition(
        &self,
        caller: &str,
        method: &str,
        idempotency_key: &str,
        reservation_id: &str,
        t: Transition,
    ) -> Result<pb::Reservation, Status> {
        // The fingerprint covers the method and the reservation id.
        let key = keyed(
            caller,
            method,
            &reservation_id.to_owned(),
            idempotency_key,
            |_| {},
        )?;
        validate::id("reservation_id", reservation_id)?;
        self.store
            .idempotent(&key, async |tx| {
                let reservation = tx.transition(reservation_id, t).await?;
                Ok(pb::GetReservationResponse {
                    reservation: Some(convert::reservation(&reservation)),
                })
            })
            .await
            .map_err(convert::status)?
            .reservation
            .ok_or_else(|| Status::internal("internal error"))
    }
}
