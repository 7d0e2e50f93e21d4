//! Payments end to end through the mesh (as the orders service for the
//! payment RPCs, as an operator for the rest): the double-entry ledger, holds,
//! captures, voids and refunds, limits, declines, replays, validation, and
//! the database's own guards on the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tonic::Code;
use weft_mesh::{ClientOptions, MeshChannel};
use weft_proto::money::v1::Money;
use weft_proto::payments::v1 as pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_tests::mesh::{Mesh, eur};

async fn as_orders(mesh: &Mesh) -> PaymentsServiceClient<MeshChannel> {
    let channel = mesh
        .channel_as("payments", mesh.orders_identity(), ClientOptions::default())
        .await
        .unwrap();
    PaymentsServiceClient::new(channel)
}

fn authorize(key: &str, account: &str, amount: i64) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        idempotency_key: key.into(),
        account_id: account.into(),
        amount: Some(eur(amount)),
        reference: format!("ref-{key}"),
    }
}

/// Authorizes and returns the authorization as answered.
async fn authorized(
    payments: &mut PaymentsServiceClient<MeshChannel>,
    request: pb::AuthorizeRequest,
) -> pb::Authorization {
    let response = payments.authorize(request).await.unwrap();
    response.into_inner().authorization.unwrap()
}

fn minor(m: &Option<Money>) -> i64 {
    m.as_ref().map(|m| m.amount_minor).unwrap_or(i64::MIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_captures_voids_and_refunds_keep_the_ledger_balanced() {
    let mesh = Mesh::without_orders().await.unwrap();
    let payer = mesh.open_account("payer", 10_000).await.unwrap();
    let payee = mesh.merchant_account_id.clone();
    let mut payments = as_orders(&mesh).await;

    // A hold moves money to the payer's hold book: balance unchanged.
    let auth = authorized(&mut payments, authorize("a-1", &payer, 4000)).await;
    assert_eq!(auth.status(), pb::AuthorizationStatus::Authorized);
    let account = mesh
        .payments()
        .await
        .unwrap()
        .get_account(pb::GetAccountRequest {
            account_id: payer.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        (
            minor(&account.balance),
            minor(&account.held),
            minor(&account.available)
        ),
        (10_000, 4000, 6000)
    );

    // Capture pays the payee; a repeat to the same payee changes nothing;
    // to another payee is refused; voiding a capture is refused.
    let capture = pb::CaptureRequest {
        idempotency_key: "c-1".into(),
        authorization_id: auth.authorization_id.clone(),
        payee_account_id: payee.clone(),
    };
    let captured = payments
        .capture(capture.clone())
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(captured.status(), pb::AuthorizationStatus::Captured);
    assert_eq!(minor(&captured.captured), 4000);
    let mut again = capture.clone();
    again.idempotency_key = "c-1-again".into();
    payments.capture(again).await.unwrap();
    assert_eq!(mesh.balance(&payer).await.unwrap(), (6000, 0));
    assert_eq!(mesh.balance(&payee).await.unwrap(), (4000, 0));
    let other = mesh.open_account("other", 0).await.unwrap();
    let mut elsewhere = capture.clone();
    elsewhere.idempotency_key = "c-2".into();
    elsewhere.payee_account_id = other;
    let err = payments.capture(elsewhere).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = payments
        .void(pb::VoidRequest {
            idempotency_key: "v-0".into(),
            authorization_id: auth.authorization_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Partial refunds, up to what was captured.
    let refund = |key: &str, amount| pb::RefundRequest {
        idempotency_key: key.into(),
        authorization_id: auth.authorization_id.clone(),
        amount: Some(eur(amount)),
    };
    payments.refund(refund("f-1", 1500)).await.unwrap();
    let err = payments.refund(refund("f-2", 2501)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let done = payments
        .refund(refund("f-3", 2500))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(minor(&done.refunded), 4000);
    assert_eq!(mesh.balance(&payer).await.unwrap(), (10_000, 0));
    assert_eq!(mesh.balance(&payee).await.unwrap(), (0, 0));

    // A void lifts a hold; a repeat changes nothing.
    let held = authorized(&mut payments, authorize("a-2", &payer, 9000)).await;
    for key in ["v-1", "v-2"] {
        let voided = payments
            .void(pb::VoidRequest {
                idempotency_key: key.into(),
                authorization_id: held.authorization_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!(voided.status(), pb::AuthorizationStatus::Voided);
    }
    assert_eq!(mesh.balance(&payer).await.unwrap(), (10_000, 0));

    // The ledger: every kind, paginated, and zero in total.
    let mut operator = mesh.payments().await.unwrap();
    let mut kinds = Vec::new();
    let mut token = String::new();
    loop {
        let page = operator
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                account_id: payer.clone(),
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 3);
        kinds.extend(page.entries.iter().map(|e| e.kind()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for kind in [
        pb::EntryKind::Deposit,
        pb::EntryKind::Hold,
        pb::EntryKind::Capture,
        pb::EntryKind::Refund,
        pb::EntryKind::Void,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
    let totals = operator
        .get_ledger_totals(pb::GetLedgerTotalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .totals;
    assert_eq!(totals.len(), 1);
    assert_eq!(
        (totals[0].currency_code.as_str(), totals[0].sum_minor),
        ("EUR", 0)
    );
    assert!(totals[0].entry_count > 10);

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_declines_replays_and_bad_input() {
    let mesh = Mesh::without_orders().await.unwrap();
    let mut operator = mesh.payments().await.unwrap();
    let mut payments = as_orders(&mesh).await;
    let account = mesh.open_account("ida", 1000).await.unwrap();
    // Overdraft up to the credit limit.
    let credit = operator
        .open_account(pb::OpenAccountRequest {
            idempotency_key: "open-credit".into(),
            owner: "jo".into(),
            currency_code: "EUR".into(),
            credit_limit_minor: 500,
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    let usd = operator
        .open_account(pb::OpenAccountRequest {
            idempotency_key: "open-usd".into(),
            owner: "kim".into(),
            currency_code: "USD".into(),
            credit_limit_minor: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();

    let declined = |a: &pb::Authorization| (a.status(), a.decline_reason());
    let a = authorized(&mut payments, authorize("d-1", &account, 1001)).await;
    assert_eq!(
        declined(&a),
        (
            pb::AuthorizationStatus::Declined,
            pb::DeclineReason::InsufficientFunds
        )
    );
    let a = authorized(&mut payments, authorize("d-2", &usd.account_id, 1)).await;
    assert_eq!(
        declined(&a),
        (
            pb::AuthorizationStatus::Declined,
            pb::DeclineReason::CurrencyMismatch
        )
    );
    let a = authorized(&mut payments, authorize("d-3", &credit.account_id, 500)).await;
    assert_eq!(a.status(), pb::AuthorizationStatus::Authorized);
    let a2 = authorized(&mut payments, authorize("d-4", &credit.account_id, 1)).await;
    assert_eq!(a2.status(), pb::AuthorizationStatus::Declined);
    payments
        .capture(pb::CaptureRequest {
            idempotency_key: "d-3-capture".into(),
            authorization_id: a.authorization_id.clone(),
            payee_account_id: mesh.merchant_account_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(mesh.balance(&credit.account_id).await.unwrap(), (-500, 0));

    // A replay replays; the key with another request is refused.
    let deposit = pb::DepositRequest {
        idempotency_key: "dep-1".into(),
        account_id: account.clone(),
        amount: Some(eur(250)),
    };
    for _ in 0..3 {
        operator.deposit(deposit.clone()).await.unwrap();
    }
    assert_eq!(mesh.balance(&account).await.unwrap(), (1250, 0));
    let mut conflicting = deposit.clone();
    conflicting.amount = Some(eur(251));
    let err = operator.deposit(conflicting).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // 40 concurrent holds of 100 against 1250: exactly 12 succeed.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..40 {
        let mut payments = payments.clone();
        let request = authorize(&format!("race-{n}"), &account, 100);
        calls.spawn(async move { payments.authorize(request).await });
    }
    let mut authorized = Vec::new();
    while let Some(done) = calls.join_next().await {
        let auth = done.unwrap().unwrap().into_inner().authorization.unwrap();
        if auth.status() == pb::AuthorizationStatus::Authorized {
            authorized.push(auth.authorization_id);
        }
    }
    assert_eq!(authorized.len(), 12);
    assert_eq!(mesh.balance(&account).await.unwrap(), (1250, 1200));
    for (n, id) in authorized.into_iter().enumerate() {
        payments
            .void(pb::VoidRequest {
                idempotency_key: format!("race-void-{n}"),
                authorization_id: id,
            })
            .await
            .unwrap();
    }

    // Bad input names the field.
    let id = account.clone();
    let cases: Vec<(pb::AuthorizeRequest, &str)> = vec![
        (authorize("", &id, 1), "idempotency_key"),
        (authorize("k", "nope", 1), "account_id"),
        (authorize("k", &id, 0), "amount.amount_minor"),
        (authorize("k", &id, -5), "amount.amount_minor"),
        (
            authorize("k", &id, 2_000_000_000_000_000),
            "amount.amount_minor",
        ),
        (
            pb::AuthorizeRequest {
                amount: Some(Money {
                    amount_minor: 1,
                    currency_code: "eur".into(),
                }),
                ..authorize("k", &id, 1)
            },
            "amount.currency_code",
        ),
        (
            pb::AuthorizeRequest {
                amount: None,
                ..authorize("k", &id, 1)
            },
            "amount",
        ),
        (
            pb::AuthorizeRequest {
                reference: String::new(),
                ..authorize("k", &id, 1)
            },
            "reference",
        ),
    ];
    for (request, field) in cases {
        let err = payments.authorize(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    let err = operator
        .open_account(pb::OpenAccountRequest {
            idempotency_key: "k".into(),
            owner: "x".into(),
            currency_code: "EUR".into(),
            credit_limit_minor: -1,
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("credit_limit_minor"), "{err:?}");
    let err = operator
        .get_account(pb::GetAccountRequest {
            account_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_an_unbalanced_or_edited_ledger() {
    let mesh = Mesh::without_orders().await.unwrap();
    let account = mesh.open_account("lee", 100).await.unwrap();
    let mut db = mesh.db.connect().await.unwrap();

    // One leg of a transaction alone is rolled back at commit.
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO payments.ledger_entries (transaction_id, account_id, book, amount_minor, \
         currency_code, kind) VALUES ('t-1', $1, 'main', 50, 'EUR', 'DEPOSIT')",
        &[&account],
    )
    .await
    .unwrap();
    let err = tx.commit().await.unwrap_err();
    assert!(format!("{err:?}").contains("does not balance"), "{err:?}");

    // Entries cannot be edited or deleted.
    for sql in [
        "UPDATE payments.ledger_entries SET amount_minor = amount_minor + 1",
        "DELETE FROM payments.ledger_entries",
    ] {
        let err = db.execute(sql, &[]).await.unwrap_err();
        assert!(format!("{err:?}").contains("append-only"), "{err:?}");
    }
    // No customer account below its limit, whatever writes it.
    let err = db
        .execute(
            "UPDATE payments.accounts SET balance_minor = -1 WHERE account_id = $1",
            &[&account],
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("within_limit"), "{err:?}");

    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

/// Money into one busy payee is spread over its slots (so captures do not
/// queue on its row), and still counted exactly: balances read while credits
/// and refunds race are the ledger's, and a refund, which takes money out,
/// first folds the slots into the row so the limit check sees all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_spread_over_slots_are_counted_exactly_and_folded_before_money_leaves() {
    let mesh = Mesh::without_orders().await.unwrap();
    let payments = as_orders(&mesh).await;
    let mut payers = Vec::new();
    for n in 0..8 {
        payers.push(
            mesh.open_account(&format!("slots-payer-{n}"), 10_000)
                .await
                .unwrap(),
        );
    }
    let merchant = mesh.open_account("slots-merchant", 0).await.unwrap();
    let capture = |key: String, payer: String| {
        let (mut payments, merchant) = (payments.clone(), merchant.clone());
        async move {
            let auth = authorized(&mut payments, authorize(&key, &payer, 100)).await;
            payments
                .capture(pb::CaptureRequest {
                    idempotency_key: format!("{key}-capture"),
                    authorization_id: auth.authorization_id.clone(),
                    payee_account_id: merchant,
                })
                .await
                .unwrap();
            auth.authorization_id
        }
    };
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..40 {
        calls.spawn(capture(format!("slots-{n}"), payers[n % 8].clone()));
    }
    let mut captured = Vec::new();
    while let Some(id) = calls.join_next().await {
        captured.push(id.unwrap());
    }
    assert_eq!(mesh.balance(&merchant).await.unwrap(), (4000, 0));
    let db = mesh.db.connect().await.unwrap();
    // (slots holding the payee's money, what its own row holds)
    let slots = async |db: &tokio_postgres::Client| -> (i64, i64) {
        let row = db
            .query_one(
                "SELECT count(*), (SELECT balance_minor FROM payments.accounts WHERE account_id = $1) \
                 FROM payments.account_slots WHERE account_id = $1",
                &[&merchant],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (spread, row) = slots(&db).await;
    assert!(spread > 1, "the credits went to {spread} slot(s)");
    assert_eq!(row, 0, "none of it sits on the payee's row yet");

    // Twenty more captures race twenty refunds of earlier ones: every
    // refund needs the slots' money (the row holds none of it).
    for n in 40..60 {
        calls.spawn(capture(format!("slots-{n}"), payers[n % 8].clone()));
    }
    let mut refunds = tokio::task::JoinSet::new();
    for (n, id) in captured.iter().take(20).enumerate() {
        let mut payments = payments.clone();
        let request = pb::RefundRequest {
            idempotency_key: format!("slots-refund-{n}"),
            authorization_id: id.clone(),
            amount: Some(eur(100)),
        };
        refunds.spawn(async move { payments.refund(request).await });
    }
    while let Some(done) = refunds.join_next().await {
        done.unwrap().unwrap();
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    assert_eq!(mesh.balance(&merchant).await.unwrap(), (4000, 0));
    let (_, row) = slots(&db).await;
    assert!(row > 0, "refunds folded the slots into the row");
    // Refunding everything left empties the payee exactly.
    for (n, id) in captured.iter().skip(20).enumerate() {
        payments
            .clone()
            .refund(pb::RefundRequest {
                idempotency_key: format!("slots-rest-{n}"),
                authorization_id: id.clone(),
                amount: Some(eur(100)),
            })
            .await
            .unwrap();
    }
    assert_eq!(mesh.balance(&merchant).await.unwrap(), (2000, 0));
    let over = payments
        .clone()
        .refund(pb::RefundRequest {
            idempotency_key: "slots-over".into(),
            authorization_id: captured[0].clone(),
            amount: Some(eur(1)),
        })
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition, "{over:?}");
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test]
async fn a_balance_that_would_pass_what_a_column_holds_is_out_of_range_not_internal() {
    let mesh = Mesh::without_orders().await.unwrap();
    let account = mesh.open_account("max", 100).await.unwrap();
    // Where many large deposits would take it (each is at most
    // MAX_AMOUNT_MINOR): a step below the largest balance kept.
    let db = mesh.db.connect().await.unwrap();
    db.execute(
        "UPDATE payments.accounts SET balance_minor = 9223372036854775000 WHERE account_id = $1",
        &[&account],
    )
    .await
    .unwrap();
    let mut payments = mesh.payments().await.unwrap();
    let err = payments
        .deposit(pb::DepositRequest {
            idempotency_key: "too-much".into(),
            account_id: account.clone(),
            amount: Some(eur(1_000_000)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        !err.message().contains("bigint"),
        "no database detail reaches the caller: {}",
        err.message()
    );
    mesh.stop().await.unwrap();
}
