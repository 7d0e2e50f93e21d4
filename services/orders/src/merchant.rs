//! The payments account captures pay into, settled before orders serves: an
//! account id given in configuration is checked to exist, and
//! `open:<owner>:<currency>` opens the account on first start and finds the
//! same one on every later start (its idempotency key is fixed), so a new
//! deployment needs no manual step before it takes orders.

use std::time::Duration;

use tokio::time::Instant;
use weft_discovery::backoff::Backoff;
use weft_proto::payments::v1::{Account, GetAccountRequest, OpenAccountRequest};

use crate::upstream::Upstreams;

/// How the merchant account is named in configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MerchantSetting {
    /// An existing account's id.
    Account(String),
    /// The account of this owner in this currency, opened if missing.
    Open {
        /// The account's owner (1 to 128 characters).
        owner: String,
        /// Its ISO 4217 currency.
        currency: String,
    },
}

/// Why the merchant account could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    /// The setting does not parse.
    #[error(
        "WEFT_MERCHANT_ACCOUNT {0:?}: give an account id or open:<owner>:<currency> (open:merchant:USD)"
    )]
    Invalid(String),
    /// Payments answered, and said no.
    #[error("merchant account {account}: {code:?}: {message}")]
    Refused {
        /// The account or owner asked for.
        account: String,
        /// Payments' status code.
        code: tonic::Code,
        /// Payments' message.
        message: String,
    },
    /// Payments did not answer in time.
    #[error("payments did not answer within {0:?} while settling the merchant account: {1}")]
    Unreachable(Duration, String),
}

impl MerchantSetting {
    /// Parses `WEFT_MERCHANT_ACCOUNT`.
    pub fn parse(value: &str) -> Result<Self, MerchantError> {
        let invalid = || MerchantError::Invalid(value.to_owned());
        let value = value.trim();
        if let Some(rest) = value.strip_prefix("open:") {
            let (owner, currency) = rest.rsplit_once(':').ok_or_else(invalid)?;
            if owner.is_empty()
                || owner.len() > 128
                || currency.len() != 3
                || !currency.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(invalid());
            }
            return Ok(Self::Open {
                owner: owner.to_owned(),
                currency: currency.to_owned(),
            });
        }
        if value.is_empty() || value.contains(char::is_whitespace) {
            return Err(invalid());
        }
        Ok(Self::Account(value.to_owned()))
    }
}

/// Settles the merchant account and returns its id: retries while payments
/// is unreachable (it may start after orders) until `within` has passed;
/// a refusal (no such account, a malformed owner) fails at once.
pub async fn settle(
    upstream: &Upstreams,
    setting: &MerchantSetting,
    within: Duration,
) -> Result<String, MerchantError> {
    let deadline = Instant::now() + within;
    let mut backoff = Backoff::new(Duration::from_millis(200), 1.6, Duration::from_secs(5), 0.2);
    loop {
        match attempt(upstream, setting).await {
            Ok(id) => return Ok(id),
            Err(status) if passing(status.code()) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > deadline {
                    return Err(MerchantError::Unreachable(
                        within,
                        status.message().to_owned(),
                    ));
                }
                tracing::warn!(code = ?status.code(), "payments not reachable for the merchant account yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Err(status) => {
                return Err(MerchantError::Refused {
                    account: match setting {
                        MerchantSetting::Account(id) => id.clone(),
                        MerchantSetting::Open { owner, currency } => {
                            format!("{owner} ({currency})")
                        }
                    },
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
    }
}

/// Codes that say payments was not there to answer, not that it refused.
fn passing(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
    )
}

async fn attempt(upstream: &Upstreams, setting: &MerchantSetting) -> Result<String, tonic::Status> {
    let mut payments = upstream.payments.clone();
    let id = match setting {
        MerchantSetting::Account(id) => id.clone(),
        MerchantSetting::Open { owner, currency } => {
            let opened = payments
                .open_account(upstream.request(OpenAccountRequest {
                    idempotency_key: format!("weft/merchant/{owner}/{currency}"),
                    owner: owner.clone(),
                    currency_code: currency.clone(),
                    credit_limit_minor: 0,
                }))
                .await?
                .into_inner();
            opened
                .account
                .map(|a| a.account_id)
                .ok_or_else(|| tonic::Status::internal("OpenAccount returned no account"))?
        }
    };
    // Whichever way it was named, the account must exist now.
    let account = payments
        .get_account(upstream.request(GetAccountRequest {
            account_id: id.clone(),
        }))
        .await?
        .into_inner();
    let Some(account) = account.account else {
        return Err(tonic::Status::not_found("GetAccount returned no account"));
    };
    check(&account, setting).map_err(tonic::Status::failed_precondition)?;
    tracing::info!(account = %id, currency = %account.currency_code, "merchant account settled");
    Ok(id)
}

/// Whether `account` can take captures: it has a currency (ISO 4217: three
/// capital letters), the one asked for when orders opened it. Payments has
/// no closed accounts, so one that exists is open.
fn check(account: &Account, setting: &MerchantSetting) -> Result<(), String> {
    let currency = account.currency_code.as_str();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("the account has no usable currency ({currency:?})"));
    }
    if let MerchantSetting::Open {
        currency: asked, ..
    } = setting
        && asked != currency
    {
        return Err(format!("the account is in {currency}, not {asked}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_without_a_currency_or_in_another_one_is_refused() {
        let account = |currency: &str| Account {
            account_id: "a".into(),
            currency_code: currency.into(),
            ..Default::default()
        };
        let named = MerchantSetting::Account("a".into());
        let opened = MerchantSetting::Open {
            owner: "merchant".into(),
            currency: "USD".into(),
        };
        assert!(check(&account("USD"), &named).is_ok());
        assert!(check(&account("USD"), &opened).is_ok());
        assert!(check(&account("EUR"), &named).is_ok());
        assert!(
            check(&account("EUR"), &opened)
                .unwrap_err()
                .contains("not USD")
        );
        for bad in ["", "usd", "US", "USDX"] {
            assert!(
                check(&account(bad), &named)
                    .unwrap_err()
                    .contains("currency"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_both_forms_and_refuses_placeholders() {
        assert_eq!(
            MerchantSetting::parse("acct_123").unwrap(),
            MerchantSetting::Account("acct_123".into())
        );
        assert_eq!(
            MerchantSetting::parse("open:merchant:USD").unwrap(),
            MerchantSetting::Open {
                owner: "merchant".into(),
                currency: "USD".into()
            }
        );
        for bad in [
            "",
            " ",
            "open:",
            "open:merchant",
            "open::USD",
            "open:m:usd",
            "open:m:EURO",
            "a b",
        ] {
            assert!(MerchantSetting::parse(bad).is_err(), "{bad:?}");
        }
    }
}
