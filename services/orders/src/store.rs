//! Orders' PostgreSQL store: orders with their saga state, written before
//! every step and fenced by a lease so only the instance driving a saga can
//! move it, and the queries behind the API and the recovery loop.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use weft_service::{Db, DbError, IdempotencyKey};

use crate::domain::{
    Money, NewOrder, Order, OrderLine, OrderStatus, OrdersError, Rejection, RejectionCode, Step,
};

type Result<T> = std::result::Result<T, OrdersError>;

const ORDER_COLUMNS: &str = "order_id, customer_id, payment_account_id, status, step, \
     rejection_code, rejection_message, reservation_id, authorization_id, authorized, committed, \
     total_minor, currency_code, cancel_reason, attempts, create_time, update_time, seq";

/// Orders' handle on its database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Builds a pool over the service's database settings; connections
    /// open lazily.
    pub fn new(config: &weft_service::Config) -> Result<Self> {
        Ok(Self {
            db: Db::new(config)?,
        })
    }

    /// The pool, for the readiness probe.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Records a new order as PENDING at its first step, leased to `owner`;
    /// or, when `key` was used before with the same request, returns that
    /// order. Returns whether the order is new.
    pub async fn place(
        &self,
        key: &IdempotencyKey,
        new: &NewOrder,
        owner: &str,
        lease: Duration,
    ) -> Result<(Order, bool)> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        // An order placed before keys were scoped to their caller answers a
        // true retry of the same request.
        let legacy = tx
            .query_opt(
                "SELECT order_id FROM orders.orders \
                 WHERE caller = '' AND idempotency_key = $1 AND fingerprint = $2",
                &[&key.key, &key.fingerprint],
            )
            .await?;
        if let Some(row) = legacy {
            let order_id: String = row.get(0);
            drop(tx);
            return Ok((load_order(&client, &order_id).await?, false));
        }
        let lease_ms = millis(lease);
        let inserted = tx
            .query_opt(
                "INSERT INTO orders.orders (caller, idempotency_key, fingerprint, customer_id, \
                 payment_account_id, status, step, lease_owner, lease_until) \
                 VALUES ($7, $1, $2, $3, $4, 'PENDING', 'RESERVE', $5, \
                 now() + $6::float8 * interval '1 millisecond') \
                 ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING order_id, create_time",
                &[
                    &key.key,
                    &key.fingerprint,
                    &new.customer_id,
                    &new.payment_account_id,
                    &owner,
                    &lease_ms,
                    &key.caller,
                ],
            )
            .await?;
        let Some(row) = inserted else {
            let row = tx
                .query_one(
                    "SELECT order_id, fingerprint FROM orders.orders \
                     WHERE caller = $1 AND idempotency_key = $2",
                    &[&key.caller, &key.key],
                )
                .await?;
            let fingerprint: Vec<u8> = row.get(1);
            if fingerprint != key.fingerprint {
                return Err(DbError::IdempotencyConflict.into());
            }
            let order_id: String = row.get(0);
            drop(tx);
            return Ok((load_order(&client, &order_id).await?, false));
        };
        let order_id: String = row.get(0);
        for (no, line) in new.lines.iter().enumerate() {
            let no = i32::try_from(no).map_err(|e| DbError::Internal(e.to_string()))?;
            tx.execute(
                "INSERT INTO orders.order_lines (order_id, line_no, sku, quantity) \
                 VALUES ($1, $2, $3, $4)",
                &[&order_id, &no, &line.sku, &line.quantity],
            )
            .await?;
        }
        log(
            &tx,
            &order_id,
            "NEW",
            Step::Reserve.as_str(),
            "placed",
            owner,
        )
        .await?;
        tx.commit().await?;
        let now: std::time::SystemTime = row.get(1);
        let order = Order {
            order_id,
            customer_id: new.customer_id.clone(),
            payment_account_id: new.payment_account_id.clone(),
            lines: new.lines.clone(),
            total: None,
            status: OrderStatus::Pending,
            step: Step::Reserve,
            rejection: None,
            reservation_id: None,
            authorization_id: None,
            authorized: false,
            committed: false,
            cancel_reason: None,
            attempts: 0,
            create_time: now,
            update_time: now,
        };
        Ok((order, true))
    }

    /// One order.
    pub async fn order(&self, order_id: &str) -> Result<Order> {
        let client = self.db.client().await?;
        load_order(&client, order_id).await
    }

    /// Takes the lease on an unsettled order for `owner`, if nobody else
    /// holds it; returns the order when taken.
    pub async fn claim(
        &self,
        order_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Order>> {
        let client = self.db.client().await?;
        let claimed = client
            .execute(
                "UPDATE orders.orders SET lease_owner = $2, \
                 lease_until = now() + $3::float8 * interval '1 millisecond' \
                 WHERE order_id = $1 AND step <> 'DONE' \
                 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < now())",
                &[&order_id, &owner, &millis(lease)],
            )
            .await?;
        if claimed == 0 {
            return Ok(None);
        }
        Ok(Some(load_order(&client, order_id).await?))
    }

    /// Moves the saga from `prev` (the order as last written) to `next`,
    /// logging `transitions` (every step taken since `prev`), renewing the
    /// lease (or letting it go once settled), in one transaction. Fenced:
    /// returns `None`, writing nothing, when `owner` no longer holds the lease
    /// or the order moved on meanwhile.
    pub async fn save(
        &self,
        prev: &Order,
        next: &Order,
        owner: &str,
        lease: Duration,
        transitions: &[(Step, Step, String)],
    ) -> Result<Option<Order>> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let settled = next.step == Step::Done;
        let (code, message) = match &next.rejection {
            Some(r) => (Some(r.code.as_str()), Some(r.message.as_str())),
            None => (None, None),
        };
        let (total, currency) = match &next.total {
            Some(m) => (Some(m.amount_minor), Some(m.currency_code.as_str())),
            None => (None, None),
        };
        let updated = tx
            .query_opt(
                "UPDATE orders.orders SET status = $4, step = $5, rejection_code = $6, \
                 rejection_message = $7, reservation_id = $8, authorization_id = $9, \
                 authorized = $10, committed = $11, total_minor = $12, currency_code = $13, \
                 cancel_reason = $14, attempts = 0, next_attempt_time = now(), \
                 lease_owner = CASE WHEN $15 THEN NULL ELSE lease_owner END, \
                 lease_until = CASE WHEN $15 THEN NULL \
                     ELSE now() + $16::float8 * interval '1 millisecond' END, \
                 update_time = now() \
                 WHERE order_id = $1 AND step = $2 AND lease_owner = $3 RETURNING update_time",
                &[
                    &prev.order_id,
                    &prev.step.as_str(),
                    &owner,
                    &next.status.as_str(),
                    &next.step.as_str(),
                    &code,
                    &message,
                    &next.reservation_id,
                    &next.authorization_id,
                    &next.authorized,
                    &next.committed,
                    &total,
                    &currency,
                    &next.cancel_reason,
                    &settled,
                    &millis(lease),
                ],
            )
            .await?;
        let Some(updated) = updated else {
            return Ok(None);
        };
        if next.lines != prev.lines {
            for (no, line) in next.lines.iter().enumerate() {
                let no = i32::try_from(no).map_err(|e| DbError::Internal(e.to_string()))?;
                let (price, currency) = match &line.unit_price {
                    Some(m) => (Some(m.amount_minor), Some(m.currency_code.as_str())),
                    None => (None, None),
                };
                tx.execute(
                    "UPDATE orders.order_lines SET unit_price_minor = $3, currency_code = $4 \
                     WHERE order_id = $1 AND line_no = $2",
                    &[&prev.order_id, &no, &price, &currency],
                )
                .await?;
            }
        }
        for (from, to, detail) in transitions {
            log(
                &tx,
                &prev.order_id,
                from.as_str(),
                to.as_str(),
                detail,
                owner,
            )
            .await?;
        }
        tx.commit().await?;
        // What was written is `next` itself: no need to read it back.
        let mut saved = next.clone();
        saved.attempts = 0;
        saved.update_time = updated.get(0);
        Ok(Some(saved))
    }

    /// Puts the current step off for `delay` and lets the lease go, so the
    /// recovery loop of any instance tries it again.
    pub async fn retry_later(
        &self,
        order: &Order,
        owner: &str,
        delay: Duration,
        detail: &str,
    ) -> Result<()> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .query_opt(
                "UPDATE orders.orders SET attempts = attempts + 1, \
                 next_attempt_time = now() + $4::float8 * interval '1 millisecond', \
                 lease_owner = NULL, lease_until = NULL, update_time = now() \
                 WHERE order_id = $1 AND step = $2 AND lease_owner = $3 RETURNING attempts",
                &[
                    &order.order_id,
                    &order.step.as_str(),
                    &owner,
                    &millis(delay),
                ],
            )
            .await?;
        // A step that keeps failing (a compensation waiting for an operator)
        // retries for as long as it takes: its retries are logged at
        // attempts 1, 2, 4, 8, …, so the log grows with the logarithm of
        // the retries, not with them.
        if let Some(row) = updated {
            let attempts: i32 = row.get(0);
            if u32::try_from(attempts).is_ok_and(u32::is_power_of_two) {
                let step = order.step.as_str();
                let detail = format!("{detail} (attempt {attempts})");
                log(&tx, &order.order_id, step, step, &detail, owner).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Starts cancelling a confirmed order: the saga moves to the refund,
    /// leased to `owner` in the same transaction, so the caller that asked
    /// drives it and no recovery loop takes it in between (which would leave
    /// the caller answered with the order still CONFIRMED). Returns the order
    /// and whether it is now leased to `owner`. Cancelling a cancelled order,
    /// or one being cancelled, changes nothing.
    pub async fn begin_cancel(
        &self,
        order_id: &str,
        reason: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Order, bool)> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT status, step FROM orders.orders WHERE order_id = $1 FOR UPDATE",
                &[&order_id],
            )
            .await?
            .ok_or_else(|| OrdersError::NotFound(order_id.into()))?;
        let status = OrderStatus::parse(row.get(0)).ok_or_else(|| internal("status"))?;
        let step = Step::parse(row.get(1)).ok_or_else(|| internal("step"))?;
        let invalid = |why| OrdersError::InvalidState {
            order_id: order_id.into(),
            status: status.as_str(),
            why,
        };
        let leased = match (status, step) {
            (OrderStatus::Confirmed, Step::Done) => {
                tx.execute(
                    "UPDATE orders.orders SET step = 'REFUND', cancel_reason = $2, \
                     attempts = 0, next_attempt_time = now(), update_time = now(), \
                     lease_owner = $3, \
                     lease_until = now() + $4::float8 * interval '1 millisecond' \
                     WHERE order_id = $1",
                    &[&order_id, &reason, &owner, &millis(lease)],
                )
                .await?;
                log(&tx, order_id, "DONE", "REFUND", "cancel requested", "api").await?;
                true
            }
            (OrderStatus::Cancelled, _) | (OrderStatus::Confirmed, _) => false,
            (OrderStatus::Pending, _) => {
                return Err(invalid(
                    "it is still being placed; cancel it once it is CONFIRMED",
                ));
            }
            (OrderStatus::Rejected, _) => return Err(invalid("a rejected order holds nothing")),
        };
        tx.commit().await?;
        Ok((load_order(&client, order_id).await?, leased))
    }

    /// Orders newest first, of one customer (or all when `customer_id` is
    /// empty), placed before the order with sequence `before` (0: from the
    /// newest); with each order's sequence for the next page's token.
    pub async fn list(
        &self,
        customer_id: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Order)>> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {ORDER_COLUMNS} FROM orders.orders \
                     WHERE ($1 = '' OR customer_id = $1) AND ($2::bigint = 0 OR seq < $2) \
                     ORDER BY seq DESC LIMIT $3"
                ),
                &[&customer_id, &before, &limit],
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut lines = load_lines(&client, &ids).await?;
        rows.iter()
            .map(|row| {
                let id: String = row.get(0);
                let order = order_from_row(row, lines.remove(&id).unwrap_or_default())?;
                Ok((row.get(17), order))
            })
            .collect()
    }

    /// Unsettled orders whose next attempt is due and whose lease is free or
    /// ran out, oldest due first.
    pub async fn due(&self, limit: i64) -> Result<Vec<String>> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT order_id FROM orders.orders WHERE step <> 'DONE' \
                 AND next_attempt_time <= now() \
                 AND (lease_owner IS NULL OR lease_until < now()) \
                 ORDER BY next_attempt_time LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Lets go of the leases an earlier run of this instance held (they
    /// end with `:<run>` after the instance id): after a restart its sagas
    /// resume at once instead of when the leases run out.
    pub async fn release_leases_of(&self, instance_id: &str) -> Result<u64> {
        let client = self.db.client().await?;
        Ok(client
            .execute(
                "UPDATE orders.orders SET lease_owner = NULL, lease_until = NULL \
                 WHERE step <> 'DONE' AND lease_owner LIKE $1 || ':%'",
                &[&instance_id.replace('%', "\\%").replace('_', "\\_")],
            )
            .await?)
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn internal(what: &str) -> OrdersError {
    OrdersError::Db(DbError::Internal(format!("unreadable stored {what}")))
}

async fn log<C: GenericClient>(
    client: &C,
    order_id: &str,
    from: &str,
    to: &str,
    detail: &str,
    owner: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO orders.saga_log (order_id, from_step, to_step, detail, owner) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&order_id, &from, &to, &detail, &owner],
        )
        .await?;
    Ok(())
}

async fn load_order<C: GenericClient>(client: &C, order_id: &str) -> Result<Order> {
    let row = client
        .query_opt(
            &format!("SELECT {ORDER_COLUMNS} FROM orders.orders WHERE order_id = $1"),
            &[&order_id],
        )
        .await?
        .ok_or_else(|| OrdersError::NotFound(order_id.into()))?;
    let mut lines = load_lines(client, &[order_id.to_owned()]).await?;
    order_from_row(&row, lines.remove(order_id).unwrap_or_default())
}

async fn load_lines<C: GenericClient>(
    client: &C,
    order_ids: &[String],
) -> Result<HashMap<String, Vec<OrderLine>>> {
    let rows = client
        .query(
            "SELECT order_id, sku, quantity, unit_price_minor, currency_code \
             FROM orders.order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
            &[&order_ids],
        )
        .await?;
    let mut lines: HashMap<String, Vec<OrderLine>> = HashMap::new();
    for row in rows {
        let price: Option<i64> = row.get(3);
        let currency: Option<String> = row.get(4);
        lines.entry(row.get(0)).or_default().push(OrderLine {
            sku: row.get(1),
            quantity: row.get(2),
            unit_price: price.zip(currency).map(|(p, c)| Money::new(p, c)),
        });
    }
    Ok(lines)
}

fn order_from_row(row: &Row, lines: Vec<OrderLine>) -> Result<Order> {
    let status = OrderStatus::parse(row.get(3)).ok_or_else(|| internal("status"))?;
    let step = Step::parse(row.get(4)).ok_or_else(|| internal("step"))?;
    let rejection = match row.get::<_, Option<&str>>(5) {
        None => None,
        Some(code) => Some(Rejection {
            code: RejectionCode::parse(code).ok_or_else(|| internal("rejection"))?,
            message: row.get::<_, Option<String>>(6).unwrap_or_default(),
        }),
    };
    let total: Option<i64> = row.get(11);
    let currency: Option<String> = row.get(12);
    Ok(Order {
        order_id: row.get(0),
        customer_id: row.get(1),
        payment_account_id: row.get(2),
        lines,
        total: total.zip(currency).map(|(t, c)| Money::new(t, c)),
        status,
        step,
        rejection,
        reservation_id: row.get(7),
        authorization_id: row.get(8),
        authorized: row.get(9),
        committed: row.get(10),
        cancel_reason: row.get(13),
        attempts: row.get(14),
        create_time: row.get(15),
        update_time: row.get(16),
    })
}
