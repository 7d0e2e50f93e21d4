//! The gRPC edge of orders: validates each request, records it, drives the
//! saga (in a task of its own, so a caller that goes away does not stop it
//! half-way) for at most the call's deadline, and answers with the order as
//! it then stands.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use weft_proto::orders::v1 as pb;
use weft_proto::orders::v1::orders_service_server::OrdersService;
use weft_service::validate::{self, invalid};
use weft_service::{IdempotencyKey, caller_of};

use crate::convert::{self, status};
use crate::domain::{NewOrder, Order, OrderLine};
use crate::fault::crash_after;
use crate::saga::Saga;
use crate::store::Store;

/// The most lines one order may hold.
pub const MAX_LINES: usize = 100;

/// Implements `weft.orders.v1.OrdersService`.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    saga: Arc<Saga>,
    store: Store,
    wait: Duration,
}

impl OrdersApi {
    /// Serves calls from `store`, driving `saga` for the calls that move
    /// an order and waiting at most `wait` for it.
    pub fn new(saga: Arc<Saga>, store: Store, wait: Duration) -> Self {
        Self { saga, store, wait }
    }

    /// Drives the order's saga in its own task and waits for it until the
    /// call's deadline (a little before, to answer in time) or `wait`.
    async fn settle(&self, order: Order, leased: bool) -> Result<Order, Status> {
        let saga = self.saga.clone();
        let order_id = order.order_id.clone();
        // In the call's span: the saga's calls belong to the caller's trace.
        let driving = tokio::spawn(
            async move {
                if leased {
                    saga.drive_leased(order).await
                } else {
                    saga.drive(&order.order_id).await
                }
            }
            .in_current_span(),
        );
        let mut wait = self.wait;
        if let Some(deadline) = weft_mesh::current_deadline() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            wait = wait.min(left.saturating_sub(left / 10));
        }
        match tokio::time::timeout(wait, driving).await {
            Ok(Ok(Ok(order))) => Ok(order),
            Ok(Ok(Err(e))) => Err(status(e)),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "saga task failed");
                Err(Status::internal("internal error"))
            }
            // Still going: answer with the order as it stands (PENDING);
            // the saga goes on and GetOrder shows how it ends.
            Err(_) => self.store.order(&order_id).await.map_err(status),
        }
    }
}

fn lines(value: &[pb::OrderLineRequest]) -> Result<Vec<OrderLine>, Status> {
    let lines = validate::lines(
        value.iter().map(|l| (l.sku.as_str(), l.quantity)),
        MAX_LINES,
    )?;
    Ok(lines
        .into_iter()
        .map(|(sku, quantity)| OrderLine {
            sku,
            quantity,
            unit_price: None,
        })
        .collect())
}

#[tonic::async_trait]
impl OrdersService for OrdersApi {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = IdempotencyKey::of(&caller, "PlaceOrder", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::text("customer_id", &req.customer_id, 128)?;
        validate::id("payment_account_id", &req.payment_account_id)?;
        let new = NewOrder {
            customer_id: req.customer_id,
            payment_account_id: req.payment_account_id,
            lines: lines(&req.lines)?,
        };
        let (order, created) = self
            .store
            .place(&key, &new, self.saga.owner(), self.saga.config().lease)
            .await
            .map_err(status)?;
        if created {
            crash_after("record");
        }
        // A new order is leased to this instance already.
        let order = self.settle(order, created).await?;
        Ok(Response::new(pb::PlaceOrderResponse {
            order: Some(convert::order(&order)),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let req = request.into_inner();
        validate::id("order_id", &req.order_id)?;
        let order = self.store.order(&req.order_id).await.map_err(status)?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(convert::order(&order)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let req = request.into_inner();
        if !req.customer_id.is_empty() {
            validate::text("customer_id", &req.customer_id, 128)?;
        }
        let limit = validate::page_size(req.page_size)?;
        let before = match validate::decode_page_token(&req.page_token)?.as_str() {
            "" => 0,
            seq => seq
                .parse::<i64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| invalid("page_token", "is not a token this service issued"))?,
        };
        // One extra row tells whether another page follows.
        let mut orders = self
            .store
            .list(&req.customer_id, before, limit + 1)
            .await
            .map_err(status)?;
        let more = orders.len() as i64 > limit;
        orders.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_page_token = match (more, orders.last()) {
            (true, Some((seq, _))) => validate::encode_page_token(&seq.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(|(_, o)| convert::order(o)).collect(),
            next_page_token,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let req = request.into_inner();
        // Cancelling is idempotent by state: a repeat finds the order
        // cancelled (or being cancelled) and changes nothing.
        validate::idempotency_key(&req.idempotency_key)?;
        validate::id("order_id", &req.order_id)?;
        validate::optional_text("reason", &req.reason, 500)?;
        let (order, leased) = self
            .store
            .begin_cancel(
                &req.order_id,
                &req.reason,
                self.saga.owner(),
                self.saga.config().lease,
            )
            .await
            .map_err(status)?;
        // A cancellation this call began is leased to this instance already;
        // a repeat drives it only if no one else does.
        let order = self.settle(order, leased).await?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(convert::order(&order)),
        }))
    }
}
