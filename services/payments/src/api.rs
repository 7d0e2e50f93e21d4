//! The gRPC edge of payments: validates each request, runs it against the
//! store, and converts the outcome to the response or a status.

use tonic::{Request, Response, Status};
use weft_proto::payments::v1 as pb;
use weft_proto::payments::v1::payments_service_server::PaymentsService;
use weft_service::validate::{self, invalid};
use weft_service::{IdempotencyKey, caller_of};

use crate::convert::{self, status};
use crate::domain::{Money, NewAccount};
use crate::store::Store;

/// The largest amount one call may move or one account may be allowed to
/// owe: far below `i64::MAX`, yet a balance or a ledger sum built from many
/// of them can pass it; that answers OUT_OF_RANGE (see `DbError::OutOfRange`).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// Implements `weft.payments.v1.PaymentsService` over a [`Store`].
#[derive(Debug, Clone)]
pub struct PaymentsApi {
    store: Store,
}

impl PaymentsApi {
    /// Serves calls from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// A positive amount of at most [`MAX_AMOUNT_MINOR`].
fn amount(field: &str, value: Option<&weft_proto::money::v1::Money>) -> Result<Money, Status> {
    let money = validate::positive_amount(field, value)?;
    if money.amount_minor > MAX_AMOUNT_MINOR {
        return Err(invalid(
            &format!("{field}.amount_minor"),
            format_args!("must be at most {MAX_AMOUNT_MINOR}"),
        ));
    }
    Ok(money)
}

#[tonic::async_trait]
impl PaymentsService for PaymentsApi {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = IdempotencyKey::of(&caller, "OpenAccount", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::text("owner", &req.owner, 128)?;
        validate::currency_code("currency_code", &req.currency_code)?;
        if !(0..=MAX_AMOUNT_MINOR).contains(&req.credit_limit_minor) {
            return Err(invalid(
                "credit_limit_minor",
                format_args!("must be between 0 and {MAX_AMOUNT_MINOR}"),
            ));
        }
        let new = NewAccount {
            owner: req.owner,
            currency_code: req.currency_code,
            credit_limit_minor: req.credit_limit_minor,
        };
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let account = tx.open_account(&new).await?;
                Ok(pb::OpenAccountResponse {
                    account: Some(convert::account(&account)),
                })
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let req = request.into_inner();
        validate::id("account_id", &req.account_id)?;
        let account = self.store.account(&req.account_id).await.map_err(status)?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(convert::account(&account)),
        }))
    }

    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::DepositResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = IdempotencyKey::of(&caller, "Deposit", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::id("account_id", &req.account_id)?;
        let amount = amount("amount", req.amount.as_ref())?;
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let account = tx.deposit(&req.account_id, &amount).await?;
                Ok(pb::DepositResponse {
                    account: Some(convert::account(&account)),
                })
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = IdempotencyKey::of(&caller, "Authorize", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::id("account_id", &req.account_id)?;
        let amount = amount("amount", req.amount.as_ref())?;
        validate::text("reference", &req.reference, 128)?;
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let auth = tx
                    .authorize(&req.account_id, &amount, &req.reference)
                    .await?;
                Ok(pb::AuthorizeResponse {
                    authorization: Some(convert::authorization(&auth)),
                })
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn capture(
        &self,
        request: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::CaptureResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = IdempotencyKey::of(&caller, "Capture", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::id("authorization_id", &req.authorization_id)?;
        validate::id("payee_account_id", &req.payee_account_id)?;
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let auth = tx
                    .capture(&req.authorization_id, &req.payee_account_id)
                    .await?;
                Ok(pb::CaptureResponse {
                    authorization: Some(convert::authorization(&auth)),
                })
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn void(
        &self,
        request: Request<pb::VoidRequest>,
    ) -> Result<Response<pb::VoidResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = IdempotencyKey::of(&caller, "Void", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::id("authorization_id", &req.authorization_id)?;
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let auth = tx.void(&req.authorization_id).await?;
                Ok(pb::VoidResponse {
                    authorization: Some(convert::authorization(&auth)),
                })
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let key = IdempotencyKey::of(&caller, "Refund", &req, &req.idempotency_key, |r| {
            r.idempotency_key.clear()
        })?;
        validate::id("authorization_id", &req.authorization_id)?;
        let amount = amount("amount", req.amount.as_ref())?;
        let response = self
            .store
            .idempotent(&key, async |tx| {
                let auth = tx.refund(&req.authorization_id, &amount).await?;
                Ok(pb::RefundResponse {
                    authorization: Some(convert::authorization(&auth)),
                })
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn get_authorization(
        &self,
        request: Request<pb::GetAuthorizationRequest>,
    ) -> Result<Response<pb::GetAuthorizationResponse>, Status> {
        let req = request.into_inner();
        validate::id("authorization_id", &req.authorization_id)?;
        let auth = self
            .store
            .authorization(&req.authorization_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetAuthorizationResponse {
            authorization: Some(convert::authorization(&auth)),
        }))
    }

    async fn list_ledger_entries(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let req = request.into_inner();
        if !req.account_id.is_empty() {
            validate::id("account_id", &req.account_id)?;
        }
        let limit = validate::page_size(req.page_size)?;
        let after = match validate::decode_page_token(&req.page_token)?.as_str() {
            "" => 0,
            last => last
                .parse::<i64>()
                .map_err(|_| invalid("page_token", "is not a token this service issued"))?,
        };
        // One extra row tells whether another page follows.
        let mut entries = self
            .store
            .entries(&req.account_id, after, limit + 1)
            .await
            .map_err(status)?;
        let more = entries.len() as i64 > limit;
        entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_page_token = match (more, entries.last()) {
            (true, Some(last)) => validate::encode_page_token(&last.entry_id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListLedgerEntriesResponse {
            entries: entries.iter().map(convert::entry).collect(),
            next_page_token,
        }))
    }

    async fn get_ledger_totals(
        &self,
        _request: Request<pb::GetLedgerTotalsRequest>,
    ) -> Result<Response<pb::GetLedgerTotalsResponse>, Status> {
        let totals = self.store.totals().await.map_err(status)?;
        Ok(Response::new(pb::GetLedgerTotalsResponse {
            totals: totals.iter().map(convert::total).collect(),
        }))
    }
}
