//! Orders' clients of inventory and payments: mesh channels that find the
//! instances through discovery, balance across them, retry what the
//! contracts mark safe, and (over mTLS) accept only the expected identity.
//! They carry the saga's calls ([`Call`]) and turn each answer, a status
//! included, into the saga's [`Outcome`].

use std::time::Duration;

use tonic::{Code, Status};
use weft_mesh::{ClientOptions, MeshChannel};
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::payments::v1 as payments_pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_service::Node;

use crate::domain::Money;
use crate::machine::{Call, Decline, Outcome, Refusal};
use crate::saga::Upstream;

/// How orders reaches the services it calls.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The discovery setting to resolve inventory and payments with.
    pub discovery: String,
    /// The client stack's behaviour.
    pub client: ClientOptions,
    /// How long one call may take, retries included.
    pub call_timeout: Duration,
}

/// Why the clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The node could not open a client (discovery, descriptors).
    #[error(transparent)]
    Node(#[from] weft_service::NodeError),
    /// A channel could not be made.
    #[error(transparent)]
    Mesh(#[from] weft_mesh::MeshClientError),
}

/// Clients of the two services the saga calls.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Inventory.
    pub inventory: InventoryServiceClient<MeshChannel>,
    /// Payments.
    pub payments: PaymentsServiceClient<MeshChannel>,
    /// The bound on each call.
    pub call_timeout: Duration,
}

impl Upstreams {
    /// Resolves both services through the node (sharing its discovery
    /// client and identity when the settings match) and builds their
    /// channels.
    pub async fn connect(node: &Node, config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let mesh = node
            .client(&config.discovery, &[weft_proto::FILE_DESCRIPTOR_SET])
            .await?
            .with_options(ClientOptions {
                // The process's route table, whatever else is set.
                routes: node.routes().clone(),
                zone: node.client_options().zone,
                ..config.client.clone()
            });
        Ok(Self {
            inventory: InventoryServiceClient::new(mesh.channel("inventory")?),
            payments: PaymentsServiceClient::new(mesh.channel("payments")?),
            call_timeout: config.call_timeout,
        })
    }

    /// A request bounded by the call timeout.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.call_timeout);
        request
    }
}

#[tonic::async_trait]
impl Upstream for Upstreams {
    async fn call(&self, call: Call) -> Outcome {
        let mut inventory = self.inventory.clone();
        let mut payments = self.payments.clone();
        let answer = match call {
            Call::Reserve {
                key,
                order_id,
                lines,
            } => {
                let request = inventory_pb::ReserveStockRequest {
                    idempotency_key: key,
                    order_id,
                    lines: lines
                        .into_iter()
                        .map(|(sku, quantity)| inventory_pb::ReservationLineRequest {
                            sku,
                            quantity,
                        })
                        .collect(),
                };
                inventory
                    .reserve_stock(self.request(request))
                    .await
                    .map(|reply| reserved(reply.into_inner().reservation.unwrap_or_default()))
            }
            Call::Authorize {
                key,
                account_id,
                amount,
                reference,
            } => {
                let request = payments_pb::AuthorizeRequest {
                    idempotency_key: key,
                    account_id,
                    amount: amount.as_ref().map(Money::to_pb),
                    reference,
                };
                payments
                    .authorize(self.request(request))
                    .await
                    .map(|reply| authorized(reply.into_inner().authorization.unwrap_or_default()))
            }
            Call::Commit {
                key,
                reservation_id,
            } => done(
                inventory
                    .commit_reservation(self.request(inventory_pb::CommitReservationRequest {
                        idempotency_key: key,
                        reservation_id,
                    }))
                    .await,
            ),
            Call::Capture {
                key,
                authorization_id,
                payee_account_id,
            } => done(
                payments
                    .capture(self.request(payments_pb::CaptureRequest {
                        idempotency_key: key,
                        authorization_id,
                        payee_account_id,
                    }))
                    .await,
            ),
            Call::Void {
                key,
                authorization_id,
            } => done(
                payments
                    .void(self.request(payments_pb::VoidRequest {
                        idempotency_key: key,
                        authorization_id,
                    }))
                    .await,
            ),
            Call::ReleaseStock {
                key,
                reservation_id,
            } => done(
                inventory
                    .release_reservation(self.request(inventory_pb::ReleaseReservationRequest {
                        idempotency_key: key,
                        reservation_id,
                    }))
                    .await,
            ),
            Call::ReturnStock {
                key,
                reservation_id,
            } => done(
                inventory
                    .return_reservation(self.request(inventory_pb::ReturnReservationRequest {
                        idempotency_key: key,
                        reservation_id,
                    }))
                    .await,
            ),
            Call::Refund {
                key,
                authorization_id,
                amount,
            } => done(
                payments
                    .refund(self.request(payments_pb::RefundRequest {
                        idempotency_key: key,
                        authorization_id,
                        amount: amount.as_ref().map(Money::to_pb),
                    }))
                    .await,
            ),
        };
        answer.unwrap_or_else(failure)
    }
}

/// A call whose answer only says it was done.
fn done<T>(reply: Result<T, Status>) -> Result<Outcome, Status> {
    reply.map(|_| Outcome::Done)
}

fn reserved(reservation: inventory_pb::Reservation) -> Outcome {
    Outcome::Reserved {
        prices: reservation
            .lines
            .into_iter()
            .filter_map(|line| {
                let price = line.unit_price?;
                Some((
                    line.sku,
                    Money::new(price.amount_minor, price.currency_code),
                ))
            })
            .collect(),
        reservation_id: reservation.reservation_id,
    }
}

fn authorized(auth: payments_pb::Authorization) -> Outcome {
    if auth.status() == payments_pb::AuthorizationStatus::Authorized {
        return Outcome::Authorized {
            authorization_id: auth.authorization_id,
        };
    }
    Outcome::Declined {
        reason: match auth.decline_reason() {
            payments_pb::DeclineReason::InsufficientFunds => Decline::InsufficientFunds,
            payments_pb::DeclineReason::CurrencyMismatch => Decline::CurrencyMismatch,
            payments_pb::DeclineReason::Unspecified => Decline::Unspecified,
        },
        authorization_id: auth.authorization_id,
    }
}

/// A failed call: refused when trying again cannot change the answer (the
/// request itself is refused); anything else may pass (the service was
/// unreachable, overloaded, timed out, or restarting).
fn failure(status: Status) -> Outcome {
    let refusal = match status.code() {
        Code::NotFound => Refusal::NotFound,
        Code::FailedPrecondition => Refusal::FailedPrecondition,
        Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => Refusal::Invalid,
        code => {
            return Outcome::Failed {
                detail: format!("{code:?} {}", status.message()),
            };
        }
    };
    Outcome::Refused {
        refusal,
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_the_request_itself_last() {
        for (code, refusal) in [
            (Code::NotFound, Some(Refusal::NotFound)),
            (Code::FailedPrecondition, Some(Refusal::FailedPrecondition)),
            (Code::InvalidArgument, Some(Refusal::Invalid)),
            (Code::AlreadyExists, Some(Refusal::Invalid)),
            (Code::OutOfRange, Some(Refusal::Invalid)),
            (Code::Unavailable, None),
            (Code::DeadlineExceeded, None),
            (Code::ResourceExhausted, None),
            (Code::Internal, None),
            (Code::Unknown, None),
            (Code::Cancelled, None),
            (Code::Aborted, None),
        ] {
            match (failure(Status::new(code, "m")), refusal) {
                (
                    Outcome::Refused {
                        refusal: got,
                        message,
                    },
                    Some(want),
                ) => {
                    assert_eq!((got, message.as_str()), (want, "m"));
                }
                (Outcome::Failed { detail }, None) => assert_eq!(detail, format!("{code:?} m")),
                (other, _) => panic!("{code:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn anything_but_authorized_is_a_decline() {
        let mut auth = payments_pb::Authorization {
            authorization_id: "a1".into(),
            ..Default::default()
        };
        auth.set_status(payments_pb::AuthorizationStatus::Authorized);
        assert_eq!(
            authorized(auth.clone()),
            Outcome::Authorized {
                authorization_id: "a1".into()
            }
        );
        auth.set_status(payments_pb::AuthorizationStatus::Declined);
        auth.set_decline_reason(payments_pb::DeclineReason::InsufficientFunds);
        assert_eq!(
            authorized(auth),
            Outcome::Declined {
                authorization_id: "a1".into(),
                reason: Decline::InsufficientFunds
            }
        );
    }
}
