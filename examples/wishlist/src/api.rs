//! The gRPC edge of wishlist: checks each request, asks inventory about new
//! products, runs the request against the store, and turns the outcome into
//! the response or a status that reveals no internal detail.

use tonic::{Request, Response, Status};

use crate::inventory::{Inventory, LookupError};
use crate::pb;
use crate::pb::wishlist_service_server::WishlistService;
use crate::store::{AddError, Item, Store};
use crate::validate;

/// Implements `wishlist.v1.WishlistService` over a [`Store`] and inventory.
#[derive(Debug, Clone)]
pub struct WishlistApi {
    store: Store,
    inventory: Inventory,
}

impl WishlistApi {
    /// Serves calls from `store`, checking products with `inventory`.
    pub fn new(store: Store, inventory: Inventory) -> Self {
        Self { store, inventory }
    }
}

#[tonic::async_trait]
impl WishlistService for WishlistApi {
    async fn add_item(
        &self,
        request: Request<pb::AddItemRequest>,
    ) -> Result<Response<pb::AddItemResponse>, Status> {
        let req = request.into_inner();
        validate::item(&req.customer_id, &req.sku)?;
        // Already on the list: nothing changes, so inventory need not be
        // asked (and a retry succeeds even while inventory is away).
        if let Some(item) = self
            .store
            .item(&req.customer_id, &req.sku)
            .await
            .map_err(db)?
        {
            return Ok(added(&item, false));
        }
        let product = self.inventory.product(&req.sku).await.map_err(lookup)?;
        let (item, is_new) = self
            .store
            .add(&req.customer_id, &product)
            .await
            .map_err(add)?;
        Ok(added(&item, is_new))
    }

    async fn remove_item(
        &self,
        request: Request<pb::RemoveItemRequest>,
    ) -> Result<Response<pb::RemoveItemResponse>, Status> {
        let req = request.into_inner();
        validate::item(&req.customer_id, &req.sku)?;
        let removed = self
            .store
            .remove(&req.customer_id, &req.sku)
            .await
            .map_err(db)?;
        Ok(Response::new(pb::RemoveItemResponse { removed }))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let req = request.into_inner();
        validate::customer_id(&req.customer_id)?;
        let items = self.store.list(&req.customer_id).await.map_err(db)?;
        Ok(Response::new(pb::ListItemsResponse {
            items: items.iter().map(item).collect(),
        }))
    }
}

/// An item to its message.
fn item(i: &Item) -> pb::WishlistItem {
    pb::WishlistItem {
        sku: i.sku.clone(),
        name: i.name.clone(),
        unit_price: Some(i.unit_price.to_pb()),
        add_time: Some(prost_types::Timestamp::from(i.add_time)),
    }
}

fn added(i: &Item, added: bool) -> Response<pb::AddItemResponse> {
    Response::new(pb::AddItemResponse {
        item: Some(item(i)),
        added,
    })
}

/// A database failure as the caller may see it (Weft's convention: the
/// detail is logged, never returned).
fn db(e: weft_service::DbError) -> Status {
    e.to_status(crate::NAME)
}

/// A failed add as the caller may see it.
fn add(e: AddError) -> Status {
    match e {
        AddError::Full => Status::failed_precondition(format!("customer_id: {e}")),
        AddError::Db(e) => db(e),
    }
}

/// Inventory's answer as wishlist's caller may see it.
fn lookup(e: LookupError) -> Status {
    match e {
        LookupError::NotFound(_) => Status::not_found(e.to_string()),
        LookupError::Unavailable(detail) => {
            tracing::warn!(%detail, "inventory unavailable");
            Status::unavailable("inventory is unavailable; try again later")
        }
        LookupError::Failed(detail) => {
            tracing::error!(%detail, "inventory failed");
            Status::internal("internal error")
        }
    }
}
