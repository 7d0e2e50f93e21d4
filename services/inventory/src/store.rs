//! Inventory's PostgreSQL store: a connection pool, the idempotency protocol,
//! and the queries behind every RPC. No overselling: stock moves with one
//! conditional `UPDATE` per product, locked in SKU order so that concurrent
//! reservations neither oversell nor deadlock.

use std::time::SystemTime;

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use weft_service::{Db, DbError, IdempotencyKey};

use crate::domain::{
    InventoryError, LineRequest, Money, NewProduct, Product, Reservation, ReservationStatus,
    ReservedLine, Stock, Transition,
};

type Result<T> = std::result::Result<T, InventoryError>;

/// Where inventory keeps its idempotency records.
const IDEMPOTENCY_TABLE: &str = "inventory.idempotency_keys";

/// Inventory's handle on its database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Builds a pool over the service's database settings; connections
    /// open lazily.
    pub fn new(config: &weft_service::Config) -> std::result::Result<Self, InventoryError> {
        Ok(Self {
            db: Db::new(config)?,
        })
    }

    /// The pool, for the readiness probe.
    pub fn db(&self) -> &Db {
        &self.db
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.db.client().await?)
    }

    /// Runs `op` under `key` (see [`Db::idempotent`]).
    pub async fn idempotent<T, F>(&self, key: &IdempotencyKey, op: F) -> Result<T>
    where
        T: prost::Message + Default,
        F: AsyncFnOnce(&Tx<'_>) -> Result<T>,
    {
        self.db
            .idempotent(IDEMPOTENCY_TABLE, key, async |tx| op(&Tx(tx)).await)
            .await
    }

    /// Returns a product and its stock.
    pub async fn product(&self, sku: &str) -> Result<(Product, Stock)> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT sku, name, price_minor, currency_code, create_time, available, reserved, sold \
                 FROM inventory.products WHERE sku = $1",
                &[&sku],
            )
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found("product", sku))?;
        Ok((product_from_row(&row), stock_from_row(&row, 5)))
    }

    /// Lists products with SKUs after `after`, in SKU order.
    pub async fn products(&self, after: &str, limit: i64) -> Result<Vec<Product>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sku, name, price_minor, currency_code, create_time \
                 FROM inventory.products WHERE sku > $1 ORDER BY sku LIMIT $2",
                &[&after, &limit],
            )
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(product_from_row).collect())
    }

    /// Returns the stock of each SKU, in the order given.
    pub async fn stock(&self, skus: &[String]) -> Result<Vec<(String, Stock)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sku, available, reserved, sold FROM inventory.products WHERE sku = ANY($1)",
                &[&skus],
            )
            .await
            .map_err(db_error)?;
        skus.iter()
            .map(|sku| {
                rows.iter()
                    .find(|row| row.get::<_, &str>(0) == sku)
                    .map(|row| (sku.clone(), stock_from_row(row, 1)))
                    .ok_or_else(|| not_found("product", sku))
            })
            .collect()
    }

    /// Returns one reservation.
    pub async fn reservation(&self, reservation_id: &str) -> Result<Reservation> {
        let client = self.client().await?;
        load_reservation(&client, reservation_id, false).await
    }
}

/// A transaction in which an idempotent mutation runs.
pub struct Tx<'a>(&'a Transaction<'a>);

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx")
    }
}

impl Tx<'_> {
    /// Creates a product with its initial stock.
    pub async fn create_product(&self, new: &NewProduct) -> Result<(Product, Stock)> {
        let row = self
            .0
            .query_opt(
                "INSERT INTO inventory.products (sku, name, price_minor, currency_code, available) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sku) DO NOTHING \
                 RETURNING sku, name, price_minor, currency_code, create_time, available, reserved, sold",
                &[
                    &new.sku,
                    &new.name,
                    &new.unit_price.amount_minor,
                    &new.unit_price.currency_code,
                    &new.initial_stock,
                ],
            )
            .await
            .map_err(db_error)?
            .ok_or_else(|| InventoryError::AlreadyExists {
                sku: new.sku.clone(),
            })?;
        self.movement(&new.sku, "create", new.initial_stock, "initial stock", None)
            .await?;
        Ok((product_from_row(&row), stock_from_row(&row, 5)))
    }

    /// Receives (positive) or writes off (negative) stock.
    pub async fn adjust_stock(&self, sku: &str, delta: i64, reason: &str) -> Result<Stock> {
        let row = self
            .0
            .query_opt(
                "SELECT available, reserved, sold FROM inventory.products WHERE sku = $1 FOR UPDATE",
                &[&sku],
            )
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found("product", sku))?;
        let stock = stock_from_row(&row, 0);
        let available = stock
            .available
            .checked_add(delta)
            .filter(|a| a.checked_add(stock.reserved + stock.sold).is_some())
            .ok_or_else(|| InventoryError::Overflow { sku: sku.into() })?;
        if available < 0 {
            return Err(InventoryError::WriteOffTooLarge {
                sku: sku.into(),
                requested: -delta,
                available: stock.available,
            });
        }
        let row = self
            .0
            .query_one(
                "UPDATE inventory.products SET available = $2, update_time = now() WHERE sku = $1 \
                 RETURNING available, reserved, sold",
                &[&sku, &available],
            )
            .await
            .map_err(db_error)?;
        self.movement(sku, "adjust", delta, reason, None).await?;
        Ok(stock_from_row(&row, 0))
    }

    /// Holds stock for every line, or for none.
    pub async fn reserve(&self, order_id: &str, lines: &[LineRequest]) -> Result<Reservation> {
        // Lock products in SKU order: concurrent reservations touching the same
        // products then queue instead of deadlocking.
        let mut order: Vec<usize> = (0..lines.len()).collect();
        order.sort_by(|&a, &b| lines[a].sku.cmp(&lines[b].sku));
        let mut prices = vec![None; lines.len()];
        for i in order {
            let line = &lines[i];
            let row = self
                .0
                .query_opt(
                    "UPDATE inventory.products \
                     SET available = available - $2, reserved = reserved + $2, update_time = now() \
                     WHERE sku = $1 AND available >= $2 RETURNING price_minor, currency_code",
                    &[&line.sku, &line.quantity],
                )
                .await
                .map_err(db_error)?;
            match row {
                Some(row) => {
                    prices[i] = Some(Money {
                        amount_minor: row.get(0),
                        currency_code: row.get(1),
                    })
                }
                None => return Err(self.shortage(line).await?),
            }
        }
        let row = self
            .0
            .query_one(
                "INSERT INTO inventory.reservations (order_id, status) VALUES ($1, 'HELD') \
                 RETURNING reservation_id",
                &[&order_id],
            )
            .await
            .map_err(db_error)?;
        let reservation_id: String = row.get(0);
        for (no, (line, price)) in lines.iter().zip(prices).enumerate() {
            let price = price.ok_or_else(|| InventoryError::Internal("unpriced line".into()))?;
            let no = i32::try_from(no).map_err(|e| InventoryError::Internal(e.to_string()))?;
            self.0
                .execute(
                    "INSERT INTO inventory.reservation_lines \
                     (reservation_id, line_no, sku, quantity, price_minor, currency_code) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &reservation_id,
                        &no,
                        &line.sku,
                        &line.quantity,
                        &price.amount_minor,
                        &price.currency_code,
                    ],
                )
                .await
                .map_err(db_error)?;
            self.movement(
                &line.sku,
                "reserve",
                line.quantity,
                "",
                Some(&reservation_id),
            )
            .await?;
        }
        load_reservation(self.0, &reservation_id, false).await
    }

    /// Explains why a line could not be reserved.
    async fn shortage(&self, line: &LineRequest) -> Result<InventoryError> {
        let row = self
            .0
            .query_opt(
                "SELECT available FROM inventory.products WHERE sku = $1",
                &[&line.sku],
            )
            .await
            .map_err(db_error)?;
        Ok(match row {
            None => not_found("product", &line.sku),
            Some(row) => InventoryError::InsufficientStock {
                sku: line.sku.clone(),
                requested: line.quantity,
                available: row.get(0),
            },
        })
    }

    /// Moves a reservation from one state to the next. Asking for the state it
    /// is already in succeeds without change, so compensations can be repeated.
    pub async fn transition(&self, reservation_id: &str, t: Transition) -> Result<Reservation> {
        let reservation = load_reservation(self.0, reservation_id, true).await?;
        if reservation.status == t.to() {
            return Ok(reservation);
        }
        if reservation.status != t.from() {
            return Err(InventoryError::InvalidState {
                reservation_id: reservation_id.into(),
                status: reservation.status.as_str(),
                action: match t {
                    Transition::Commit => "commit",
                    Transition::Release => "release",
                    Transition::Return => "return",
                },
            });
        }
        let (update, kind) = match t {
            Transition::Commit => ("reserved = reserved - $2, sold = sold + $2", "commit"),
            Transition::Release => (
                "reserved = reserved - $2, available = available + $2",
                "release",
            ),
            Transition::Return => ("sold = sold - $2, available = available + $2", "return"),
        };
        let sql =
            format!("UPDATE inventory.products SET {update}, update_time = now() WHERE sku = $1");
        let mut lines: Vec<&ReservedLine> = reservation.lines.iter().collect();
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        for line in lines {
            self.0
                .execute(&sql, &[&line.sku, &line.quantity])
                .await
                .map_err(db_error)?;
            self.movement(&line.sku, kind, line.quantity, "", Some(reservation_id))
                .await?;
        }
        self.0
            .execute(
                "UPDATE inventory.reservations SET status = $2, update_time = now() \
                 WHERE reservation_id = $1",
                &[&reservation_id, &t.to().as_str()],
            )
            .await
            .map_err(db_error)?;
        load_reservation(self.0, reservation_id, false).await
    }

    async fn movement(
        &self,
        sku: &str,
        kind: &str,
        delta: i64,
        reason: &str,
        reservation_id: Option<&str>,
    ) -> Result<()> {
        self.0
            .execute(
                "INSERT INTO inventory.stock_movements (sku, kind, delta, reason, reservation_id) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&sku, &kind, &delta, &reason, &reservation_id],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

async fn load_reservation<C: GenericClient>(
    client: &C,
    reservation_id: &str,
    for_update: bool,
) -> Result<Reservation> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = client
        .query_opt(
            &format!(
                "SELECT reservation_id, order_id, status, create_time, update_time \
                 FROM inventory.reservations WHERE reservation_id = $1{lock}"
            ),
            &[&reservation_id],
        )
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found("reservation", reservation_id))?;
    let status: &str = row.get(2);
    let status = ReservationStatus::parse(status)
        .ok_or_else(|| InventoryError::Internal(format!("unknown reservation status {status}")))?;
    let lines = client
        .query(
            "SELECT sku, quantity, price_minor, currency_code FROM inventory.reservation_lines \
             WHERE reservation_id = $1 ORDER BY line_no",
            &[&reservation_id],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|line| ReservedLine {
            sku: line.get(0),
            quantity: line.get(1),
            unit_price: Money {
                amount_minor: line.get(2),
                currency_code: line.get(3),
            },
        })
        .collect();
    Ok(Reservation {
        reservation_id: row.get(0),
        order_id: row.get(1),
        lines,
        status,
        create_time: row.get::<_, SystemTime>(3),
        update_time: row.get::<_, SystemTime>(4),
    })
}

fn product_from_row(row: &Row) -> Product {
    Product {
        sku: row.get(0),
        name: row.get(1),
        unit_price: Money {
            amount_minor: row.get(2),
            currency_code: row.get(3),
        },
        create_time: row.get(4),
    }
}

fn stock_from_row(row: &Row, first: usize) -> Stock {
    Stock {
        available: row.get(first),
        reserved: row.get(first + 1),
        sold: row.get(first + 2),
    }
}

fn not_found(kind: &'static str, id: &str) -> InventoryError {
    InventoryError::NotFound {
        kind,
        id: id.into(),
    }
}

/// Database errors as inventory's own.
fn db_error(e: tokio_postgres::Error) -> InventoryError {
    DbError::from(e).into()
}
