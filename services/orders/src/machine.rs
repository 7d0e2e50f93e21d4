//! The order saga as one table: from an order's step and what that step's
//! call came to, the order's next state. With [`call`], which names the call
//! a step makes, it is the whole saga; the driver (`saga.rs`) only makes the
//! calls and decides when to write. Nothing here knows gRPC, the database or
//! the clock, so every transition and every compensation path is tested
//! here alone.

use crate::domain::{Money, Order, OrderStatus, RejectionCode, Step};

/// A call the saga makes to inventory or payments. Each carries the key of
/// its order and step, so a repeat (a retry, or a replay after a crash) gets
/// the first answer again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Reserve the lines' stock and price it.
    Reserve {
        /// Idempotency key.
        key: String,
        /// The order, for inventory's records.
        order_id: String,
        /// Each line's SKU and quantity.
        lines: Vec<(String, i64)>,
    },
    /// Hold the total on the payer's account.
    Authorize {
        /// Idempotency key.
        key: String,
        /// Who pays.
        account_id: String,
        /// The total (absent only if pricing never happened, which payments
        /// refuses).
        amount: Option<Money>,
        /// The order, for payments' records.
        reference: String,
    },
    /// Sell the reserved stock.
    Commit {
        /// Idempotency key.
        key: String,
        /// Inventory's reservation.
        reservation_id: String,
    },
    /// Pay the held money to the merchant.
    Capture {
        /// Idempotency key.
        key: String,
        /// Payments' hold.
        authorization_id: String,
        /// The merchant's account.
        payee_account_id: String,
    },
    /// Lift the hold.
    Void {
        /// Idempotency key.
        key: String,
        /// Payments' hold.
        authorization_id: String,
    },
    /// Give back reserved stock that was never sold.
    ReleaseStock {
        /// Idempotency key.
        key: String,
        /// Inventory's reservation.
        reservation_id: String,
    },
    /// Give back stock that was sold.
    ReturnStock {
        /// Idempotency key.
        key: String,
        /// Inventory's reservation.
        reservation_id: String,
    },
    /// Give the captured money back.
    Refund {
        /// Idempotency key.
        key: String,
        /// Payments' hold, now captured.
        authorization_id: String,
        /// The total.
        amount: Option<Money>,
    },
}

/// Why payments declined an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    /// Not enough money on the account.
    InsufficientFunds,
    /// The account holds another currency than the order's.
    CurrencyMismatch,
    /// No reason given.
    Unspecified,
}

/// How a refused call was refused: the same request will be refused again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Something the request names does not exist.
    NotFound,
    /// The state the request needs does not hold (no stock, say).
    FailedPrecondition,
    /// The request itself is wrong.
    Invalid,
}

/// What a step's call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stock reserved: the reservation and each SKU's unit price.
    Reserved {
        /// Inventory's reservation.
        reservation_id: String,
        /// Unit price by SKU.
        prices: Vec<(String, Money)>,
    },
    /// Money held.
    Authorized {
        /// Payments' hold.
        authorization_id: String,
    },
    /// Payments declined: a decision, recorded under the step's key.
    Declined {
        /// Payments' record of the decision.
        authorization_id: String,
        /// Why.
        reason: Decline,
    },
    /// The call did what it asked (commit, capture, void, release, return,
    /// refund).
    Done,
    /// The step needed no call: nothing was held to capture or refund.
    NothingToDo,
    /// The call was refused and would be again.
    Refused {
        /// How.
        refusal: Refusal,
        /// The service's message, kept on a rejection.
        message: String,
    },
    /// The call failed for a reason that may pass (unreachable, overloaded,
    /// timed out).
    Failed {
        /// What happened, for the log and the order's history.
        detail: String,
    },
}

/// What the saga does after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Take this state and go on.
    Advance {
        /// The order after the step.
        order: Box<Order>,
        /// What happened, for the order's history.
        detail: String,
    },
    /// Leave the order as it is and try the step again later.
    Wait {
        /// Why.
        detail: String,
        /// The step was refused where it must not be (a compensation, or
        /// an answer of the wrong kind): retrying alone will not fix it, so
        /// an operator should look.
        alarm: bool,
    },
}

/// The call the order's step makes, or `None` when it makes none (the saga
/// is done, or nothing was held to capture or refund).
pub fn call(order: &Order, payee_account_id: &str) -> Option<Call> {
    let key = order.key(order.step);
    let reservation_id = || order.reservation_id.clone().unwrap_or_default();
    let authorization_id = order.authorization_id.clone();
    Some(match order.step {
        Step::Reserve => Call::Reserve {
            key,
            order_id: order.order_id.clone(),
            lines: order
                .lines
                .iter()
                .map(|l| (l.sku.clone(), l.quantity))
                .collect(),
        },
        Step::Authorize => Call::Authorize {
            key,
            account_id: order.payment_account_id.clone(),
            amount: order.total.clone(),
            reference: order.order_id.clone(),
        },
        Step::Commit => Call::Commit {
            key,
            reservation_id: reservation_id(),
        },
        Step::Capture => Call::Capture {
            key,
            authorization_id: authorization_id?,
            payee_account_id: payee_account_id.to_owned(),
        },
        Step::Void => Call::Void {
            key,
            authorization_id: authorization_id.unwrap_or_default(),
        },
        Step::Release if order.committed => Call::ReturnStock {
            key,
            reservation_id: reservation_id(),
        },
        Step::Release => Call::ReleaseStock {
            key,
            reservation_id: reservation_id(),
        },
        Step::Refund => Call::Refund {
            key,
            authorization_id: authorization_id?,
            amount: order.total.clone(),
        },
        Step::Restock => Call::ReturnStock {
            key,
            reservation_id: reservation_id(),
        },
        Step::Done => return None,
    })
}

/// The saga's table: the order's next state from its step and what the
/// step came to.
///
/// A forward step refused rejects the order and compensates what was done
/// (see [`Order::rejected`]); a compensating step refused waits and alarms,
/// because it must happen; anything that may pass waits.
pub fn transition(order: &Order, outcome: Outcome) -> Next {
    use Outcome as O;
    use Step as S;
    let step = order.step;
    match (step, outcome) {
        (S::Done, _) => wait("settled", false),
        (_, O::Failed { detail }) => wait(format!("{}: {detail}", step.as_str()), false),

        (
            S::Reserve,
            O::Reserved {
                reservation_id,
                prices,
            },
        ) => reserved(order, reservation_id, &prices),
        (S::Reserve, O::Refused { refusal, message }) => reject(
            order,
            match refusal {
                Refusal::NotFound => RejectionCode::UnknownProduct,
                Refusal::FailedPrecondition => RejectionCode::OutOfStock,
                Refusal::Invalid => RejectionCode::Failed,
            },
            message,
        ),

        (S::Authorize, O::Authorized { authorization_id }) => {
            advance(order, "payment authorized", |next| {
                next.authorization_id = Some(authorization_id);
                next.authorized = true;
                next.step = S::Commit;
            })
        }
        (
            S::Authorize,
            O::Declined {
                authorization_id,
                reason,
            },
        ) => {
            let why = match reason {
                Decline::InsufficientFunds => "insufficient funds",
                Decline::CurrencyMismatch => "the account is in another currency than the order",
                Decline::Unspecified => "declined",
            };
            let message = format!("payment declined: {why}");
            let mut next = order.clone();
            next.authorization_id = Some(authorization_id);
            Next::Advance {
                order: Box::new(next.rejected(RejectionCode::PaymentDeclined, &message)),
                detail: message,
            }
        }
        (S::Authorize, O::Refused { refusal, message }) => reject(
            order,
            match refusal {
                Refusal::NotFound => RejectionCode::UnknownAccount,
                Refusal::FailedPrecondition | Refusal::Invalid => RejectionCode::Failed,
            },
            message,
        ),

        (S::Commit, O::Done) => advance(order, "stock sold", |next| {
            next.committed = true;
            next.step = S::Capture;
        }),
        (S::Capture, O::Done) => advance(order, "payment captured", confirm),
        (S::Capture, O::NothingToDo) => advance(order, "nothing to pay", confirm),
        (S::Commit | S::Capture, O::Refused { message, .. }) => {
            reject(order, RejectionCode::Failed, message)
        }

        (S::Void, O::Done) => advance(order, "payment voided", |next| {
            next.authorized = false;
            if next.reservation_id.is_some() {
                next.step = S::Release;
            } else {
                next.status = OrderStatus::Rejected;
                next.step = S::Done;
            }
        }),
        (S::Release, O::Done) => advance(order, "stock given back", |next| {
            next.status = OrderStatus::Rejected;
            next.step = S::Done;
        }),
        (S::Refund, O::Done) => advance(order, "payment refunded", |next| {
            next.step = S::Restock;
        }),
        (S::Refund, O::NothingToDo) => advance(order, "nothing to refund", |next| {
            next.step = S::Restock;
        }),
        (S::Restock, O::Done) => advance(order, "stock returned", |next| {
            next.status = OrderStatus::Cancelled;
            next.step = S::Done;
        }),
        (S::Void | S::Release | S::Refund | S::Restock, O::Refused { refusal, message }) => wait(
            format!(
                "{}: compensation refused ({refusal:?}): {message}",
                step.as_str()
            ),
            true,
        ),

        (_, outcome) => wait(
            format!("{}: unexpected answer {}", step.as_str(), kind(&outcome)),
            true,
        ),
    }
}

/// The reservation's prices on the lines, then on to the payment; straight
/// to the sale when there is nothing to pay, and rejected (releasing the
/// stock) when the lines cannot be totalled.
fn reserved(order: &Order, reservation_id: String, prices: &[(String, Money)]) -> Next {
    let mut next = order.clone();
    next.reservation_id = Some(reservation_id);
    for line in &mut next.lines {
        line.unit_price = prices
            .iter()
            .find(|(sku, _)| *sku == line.sku)
            .map(|(_, price)| price.clone());
    }
    match next.priced_total() {
        Ok(total) => {
            next.step = if total.amount_minor == 0 {
                Step::Commit
            } else {
                Step::Authorize
            };
            next.total = Some(total);
            Next::Advance {
                order: Box::new(next),
                detail: "stock reserved".into(),
            }
        }
        Err(why) => Next::Advance {
            order: Box::new(next.rejected(RejectionCode::Failed, why)),
            detail: why.into(),
        },
    }
}

fn confirm(next: &mut Order) {
    next.status = OrderStatus::Confirmed;
    next.step = Step::Done;
}

fn advance(order: &Order, detail: &str, change: impl FnOnce(&mut Order)) -> Next {
    let mut next = order.clone();
    change(&mut next);
    Next::Advance {
        order: Box::new(next),
        detail: detail.into(),
    }
}

fn reject(order: &Order, code: RejectionCode, message: String) -> Next {
    let detail = format!("{}: {message}", order.step.as_str());
    Next::Advance {
        order: Box::new(order.rejected(code, message)),
        detail,
    }
}

fn wait(detail: impl Into<String>, alarm: bool) -> Next {
    Next::Wait {
        detail: detail.into(),
        alarm,
    }
}

fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Reserved { .. } => "reserved",
        Outcome::Authorized { .. } => "authorized",
        Outcome::Declined { .. } => "declined",
        Outcome::Done => "done",
        Outcome::NothingToDo => "nothing to do",
        Outcome::Refused { .. } => "refused",
        Outcome::Failed { .. } => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYEE: &str = "merchant";

    fn order(lines: &[(&str, i64)]) -> Order {
        Order::sample(lines)
    }

    fn eur(amount: i64) -> Money {
        Money::new(amount, "EUR")
    }

    fn reserved_at(prices: &[(&str, Money)]) -> Outcome {
        Outcome::Reserved {
            reservation_id: "r1".into(),
            prices: prices
                .iter()
                .map(|(sku, m)| ((*sku).into(), m.clone()))
                .collect(),
        }
    }

    fn authorized() -> Outcome {
        Outcome::Authorized {
            authorization_id: "a1".into(),
        }
    }

    fn refused(refusal: Refusal) -> Outcome {
        Outcome::Refused {
            refusal,
            message: "no".into(),
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            detail: "Unavailable down".into(),
        }
    }

    #[track_caller]
    fn advanced(next: Next) -> (Order, String) {
        match next {
            Next::Advance { order, detail } => (*order, detail),
            Next::Wait { detail, .. } => panic!("waited: {detail}"),
        }
    }

    #[track_caller]
    fn waited(next: Next) -> (String, bool) {
        match next {
            Next::Wait { detail, alarm } => (detail, alarm),
            Next::Advance { order, detail } => {
                panic!("advanced to {:?}: {detail}", order.step)
            }
        }
    }

    /// Drives `order` through the table with `answer` standing in for
    /// inventory and payments, as the driver would; returns where it ended
    /// and the calls made, stopping at the first wait.
    fn run(
        mut order: Order,
        mut answer: impl FnMut(&Call) -> Outcome,
    ) -> (Order, Vec<Call>, Option<String>) {
        let mut calls = Vec::new();
        while order.step != Step::Done {
            let outcome = match call(&order, PAYEE) {
                Some(c) => {
                    let outcome = answer(&c);
                    calls.push(c);
                    outcome
                }
                None => Outcome::NothingToDo,
            };
            match transition(&order, outcome) {
                Next::Advance { order: next, .. } => order = *next,
                Next::Wait { detail, .. } => return (order, calls, Some(detail)),
            }
        }
        (order, calls, None)
    }

    /// Every call succeeds: reserved at `price` per unit, authorized, sold,
    /// captured, and each compensation done.
    fn happy(price: Money) -> impl FnMut(&Call) -> Outcome {
        move |c| match c {
            Call::Reserve { lines, .. } => Outcome::Reserved {
                reservation_id: "r1".into(),
                prices: lines
                    .iter()
                    .map(|(sku, _)| (sku.clone(), price.clone()))
                    .collect(),
            },
            Call::Authorize { .. } => authorized(),
            _ => Outcome::Done,
        }
    }

    fn names(calls: &[Call]) -> Vec<&'static str> {
        calls
            .iter()
            .map(|c| match c {
                Call::Reserve { .. } => "reserve",
                Call::Authorize { .. } => "authorize",
                Call::Commit { .. } => "commit",
                Call::Capture { .. } => "capture",
                Call::Void { .. } => "void",
                Call::ReleaseStock { .. } => "release",
                Call::ReturnStock { .. } => "return",
                Call::Refund { .. } => "refund",
            })
            .collect()
    }

    #[test]
    fn reserved_prices_the_lines_and_goes_on_to_the_payment() {
        let o = order(&[("a", 2), ("b", 1)]);
        let (next, detail) = advanced(transition(
            &o,
            reserved_at(&[("a", eur(150)), ("b", eur(100))]),
        ));
        assert_eq!(detail, "stock reserved");
        assert_eq!(next.step, Step::Authorize);
        assert_eq!(next.total, Some(eur(400)));
        assert_eq!(next.reservation_id.as_deref(), Some("r1"));
        assert_eq!(next.lines[0].unit_price, Some(eur(150)));
        assert_eq!(next.status, OrderStatus::Pending);
    }

    #[test]
    fn free_goods_skip_the_payment() {
        let o = order(&[("a", 3)]);
        let (next, _) = advanced(transition(&o, reserved_at(&[("a", eur(0))])));
        assert_eq!(next.step, Step::Commit);
        assert_eq!(next.total, Some(eur(0)));
        assert_eq!(call(&next, PAYEE).map(|c| names(&[c])[0]), Some("commit"));
        let (sold, _) = advanced(transition(&next, Outcome::Done));
        assert_eq!(sold.step, Step::Capture);
        assert_eq!(call(&sold, PAYEE), None, "nothing was held to capture");
        let (done, detail) = advanced(transition(&sold, Outcome::NothingToDo));
        assert_eq!(
            (done.step, done.status),
            (Step::Done, OrderStatus::Confirmed)
        );
        assert_eq!(detail, "nothing to pay");
    }

    #[test]
    fn lines_that_cannot_be_totalled_reject_and_release_the_stock() {
        let o = order(&[("a", 1), ("b", 1)]);
        for (prices, why) in [
            (vec![("a", eur(1))], "a line came back without a price"),
            (
                vec![("a", eur(1)), ("b", Money::new(1, "USD"))],
                "the lines are priced in more than one currency",
            ),
            (
                vec![("a", eur(i64::MAX)), ("b", eur(1))],
                "the order total is too large",
            ),
        ] {
            let (next, detail) = advanced(transition(&o, reserved_at(&prices)));
            assert_eq!(detail, why);
            assert_eq!(next.step, Step::Release, "{why}");
            let rejection = next.rejection.clone().unwrap_or_else(|| panic!("{why}"));
            assert_eq!(rejection.code, RejectionCode::Failed);
            assert_eq!(
                call(&next, PAYEE),
                Some(Call::ReleaseStock {
                    key: "order/o1/release".into(),
                    reservation_id: "r1".into()
                })
            );
        }
    }

    #[test]
    fn a_refused_reservation_rejects_with_nothing_to_undo() {
        for (refusal, code) in [
            (Refusal::NotFound, RejectionCode::UnknownProduct),
            (Refusal::FailedPrecondition, RejectionCode::OutOfStock),
            (Refusal::Invalid, RejectionCode::Failed),
        ] {
            let (next, detail) = advanced(transition(&order(&[("a", 1)]), refused(refusal)));
            assert_eq!(
                (next.step, next.status),
                (Step::Done, OrderStatus::Rejected)
            );
            assert_eq!(
                next.rejection.map(|r| (r.code, r.message)),
                Some((code, "no".into()))
            );
            assert_eq!(detail, "RESERVE: no");
        }
    }

    #[test]
    fn a_passing_failure_waits_at_every_step_without_alarm() {
        for &step in Step::ALL.iter().filter(|s| **s != Step::Done) {
            let mut o = order(&[("a", 1)]);
            o.step = step;
            let (detail, alarm) = waited(transition(&o, failed()));
            assert_eq!(detail, format!("{}: Unavailable down", step.as_str()));
            assert!(!alarm, "{step:?}");
        }
    }

    #[test]
    fn authorization_holds_then_sells() {
        let mut o = order(&[("a", 1)]);
        o.step = Step::Authorize;
        o.reservation_id = Some("r1".into());
        o.total = Some(eur(5));
        assert_eq!(
            call(&o, PAYEE),
            Some(Call::Authorize {
                key: "order/o1/authorize".into(),
                account_id: "payer".into(),
                amount: Some(eur(5)),
                reference: "o1".into(),
            })
        );
        let (next, _) = advanced(transition(&o, authorized()));
        assert_eq!(next.step, Step::Commit);
        assert!(next.authorized);
        assert_eq!(next.authorization_id.as_deref(), Some("a1"));
    }

    #[test]
    fn a_decline_rejects_and_releases_the_stock() {
        let mut o = order(&[("a", 1)]);
        o.step = Step::Authorize;
        o.reservation_id = Some("r1".into());
        for (reason, message) in [
            (
                Decline::InsufficientFunds,
                "payment declined: insufficient funds",
            ),
            (
                Decline::CurrencyMismatch,
                "payment declined: the account is in another currency than the order",
            ),
            (Decline::Unspecified, "payment declined: declined"),
        ] {
            let (next, detail) = advanced(transition(
                &o,
                Outcome::Declined {
                    authorization_id: "a1".into(),
                    reason,
                },
            ));
            assert_eq!(detail, message);
            assert_eq!(next.step, Step::Release, "nothing is held, so no void");
            assert!(!next.authorized);
            assert_eq!(
                next.rejection.map(|r| (r.code, r.message)),
                Some((RejectionCode::PaymentDeclined, message.into()))
            );
        }
    }

    #[test]
    fn a_refused_authorization_rejects_and_releases_the_stock() {
        let mut o = order(&[("a", 1)]);
        o.step = Step::Authorize;
        o.reservation_id = Some("r1".into());
        for (refusal, code) in [
            (Refusal::NotFound, RejectionCode::UnknownAccount),
            (Refusal::FailedPrecondition, RejectionCode::Failed),
            (Refusal::Invalid, RejectionCode::Failed),
        ] {
            let (next, _) = advanced(transition(&o, refused(refusal)));
            assert_eq!(next.step, Step::Release);
            assert_eq!(next.rejection.map(|r| r.code), Some(code));
        }
    }

    #[test]
    fn every_forward_path_ends_confirmed_with_the_calls_in_order() {
        let (done, calls, waited) = run(order(&[("a", 2)]), happy(eur(10)));
        assert_eq!(waited, None);
        assert_eq!(
            (done.step, done.status),
            (Step::Done, OrderStatus::Confirmed)
        );
        assert_eq!(names(&calls), ["reserve", "authorize", "commit", "capture"]);
        assert_eq!(
            calls[3],
            Call::Capture {
                key: "order/o1/capture".into(),
                authorization_id: "a1".into(),
                payee_account_id: PAYEE.into(),
            }
        );
        // Each call's key is its order's and step's, so a replay repeats it.
        let keys: Vec<_> = calls
            .iter()
            .map(|c| match c {
                Call::Reserve { key, .. }
                | Call::Authorize { key, .. }
                | Call::Commit { key, .. }
                | Call::Capture { key, .. }
                | Call::Void { key, .. }
                | Call::ReleaseStock { key, .. }
                | Call::ReturnStock { key, .. }
                | Call::Refund { key, .. } => key.as_str(),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "order/o1/reserve",
                "order/o1/authorize",
                "order/o1/commit",
                "order/o1/capture"
            ]
        );
    }

    #[test]
    fn every_compensation_path_undoes_exactly_what_was_done() {
        // (the step refused, the calls made, the rejection code)
        let cases = [
            ("reserve", vec!["reserve"], RejectionCode::OutOfStock),
            (
                "authorize",
                vec!["reserve", "authorize", "release"],
                RejectionCode::Failed,
            ),
            (
                "commit",
                vec!["reserve", "authorize", "commit", "void", "release"],
                RejectionCode::Failed,
            ),
            (
                "capture",
                // Sold stock goes back by a return, not a release.
                vec![
                    "reserve",
                    "authorize",
                    "commit",
                    "capture",
                    "void",
                    "return",
                ],
                RejectionCode::Failed,
            ),
        ];
        for (refuse, expected, code) in cases {
            let mut happy = happy(eur(10));
            let (done, calls, waited) = run(order(&[("a", 1)]), |c| {
                if names(std::slice::from_ref(c))[0] == refuse {
                    refused(Refusal::FailedPrecondition)
                } else {
                    happy(c)
                }
            });
            assert_eq!(waited, None, "{refuse}");
            assert_eq!(names(&calls), expected, "{refuse}");
            assert_eq!(
                (done.step, done.status),
                (Step::Done, OrderStatus::Rejected),
                "{refuse}"
            );
            assert_eq!(done.rejection.map(|r| r.code), Some(code), "{refuse}");
            assert!(!done.authorized, "{refuse}: the hold is lifted");
        }
    }

    #[test]
    fn a_void_without_stock_ends_rejected() {
        let mut o = order(&[]);
        o.step = Step::Void;
        o.authorized = true;
        o.authorization_id = Some("a1".into());
        let (next, detail) = advanced(transition(&o, Outcome::Done));
        assert_eq!(detail, "payment voided");
        assert_eq!(
            (next.step, next.status),
            (Step::Done, OrderStatus::Rejected)
        );
    }

    #[test]
    fn cancelling_refunds_then_returns_the_stock() {
        let (confirmed, _, _) = run(order(&[("a", 1)]), happy(eur(10)));
        let mut cancelling = confirmed;
        cancelling.step = Step::Refund;
        let (done, calls, waited) = run(cancelling.clone(), happy(eur(10)));
        assert_eq!(waited, None);
        assert_eq!(names(&calls), ["refund", "return"]);
        assert_eq!(
            calls[0],
            Call::Refund {
                key: "order/o1/refund".into(),
                authorization_id: "a1".into(),
                amount: Some(eur(10)),
            }
        );
        assert_eq!(
            calls[1],
            Call::ReturnStock {
                key: "order/o1/restock".into(),
                reservation_id: "r1".into(),
            }
        );
        assert_eq!(
            (done.step, done.status),
            (Step::Done, OrderStatus::Cancelled)
        );

        // A free order has nothing to refund.
        let (free, _, _) = run(order(&[("a", 1)]), happy(eur(0)));
        let mut cancelling = free;
        cancelling.step = Step::Refund;
        let (done, calls, _) = run(cancelling, happy(eur(0)));
        assert_eq!(names(&calls), ["return"]);
        assert_eq!(done.status, OrderStatus::Cancelled);
    }

    #[test]
    fn a_refused_compensation_waits_and_alarms() {
        let mut o = order(&[("a", 1)]);
        o.reservation_id = Some("r1".into());
        o.authorization_id = Some("a1".into());
        o.authorized = true;
        for step in [Step::Void, Step::Release, Step::Refund, Step::Restock] {
            o.step = step;
            let (detail, alarm) = waited(transition(&o, refused(Refusal::NotFound)));
            assert!(alarm, "{step:?}");
            assert!(detail.starts_with(step.as_str()), "{detail}");
        }
    }

    #[test]
    fn an_answer_of_the_wrong_kind_waits_and_alarms() {
        let mut o = order(&[("a", 1)]);
        o.step = Step::Commit;
        let (detail, alarm) = waited(transition(&o, authorized()));
        assert_eq!(detail, "COMMIT: unexpected answer authorized");
        assert!(alarm);
        o.step = Step::Reserve;
        assert!(waited(transition(&o, Outcome::Done)).1);
    }

    #[test]
    fn a_settled_order_makes_no_call_and_stays() {
        let mut o = order(&[("a", 1)]);
        o.step = Step::Done;
        o.status = OrderStatus::Confirmed;
        assert_eq!(call(&o, PAYEE), None);
        assert_eq!(
            waited(transition(&o, Outcome::Done)),
            ("settled".into(), false)
        );
    }
}
