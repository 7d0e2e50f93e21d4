//! Wishlist's PostgreSQL store: the items of every customer's list, in the
//! schema `wishlist`. Adding is one transaction per customer at a time, so the
//! list's bound holds however many adds run at once.

use std::time::SystemTime;

use tokio_postgres::Row;
use weft_service::{Db, DbError, Money};

use crate::inventory::Product;

/// The most items one wishlist holds, so a list is always one answer.
pub const MAX_ITEMS: i64 = 100;

/// A product on a customer's list, as it was when added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The SKU.
    pub sku: String,
    /// The name when added.
    pub name: String,
    /// The unit price when added.
    pub unit_price: Money,
    /// When it was added.
    pub add_time: SystemTime,
}

/// Why an add failed.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The list holds [`MAX_ITEMS`] already.
    #[error("the wishlist already holds {MAX_ITEMS} items")]
    Full,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for AddError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

const ITEM_COLUMNS: &str = "sku, name, price_minor, currency_code, add_time";

/// Wishlist's handle on its database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Builds a pool over the service's database settings; connections open
    /// lazily.
    pub fn new(config: &weft_service::Config) -> Result<Self, DbError> {
        Ok(Self {
            db: Db::new(config)?,
        })
    }

    /// The pool, for the readiness probe.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The item `sku` on `customer`'s list, if it is there.
    pub async fn item(&self, customer: &str, sku: &str) -> Result<Option<Item>, DbError> {
        let client = self.db.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM wishlist.items WHERE customer_id = $1 AND sku = $2"
                ),
                &[&customer, &sku],
            )
            .await?;
        Ok(row.as_ref().map(item_from_row))
    }

    /// Puts `product` on `customer`'s list unless it is there; returns the
    /// item on the list and whether this call added it.
    pub async fn add(&self, customer: &str, product: &Product) -> Result<(Item, bool), AddError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        // Adds to one list take turns until commit, so two cannot both pass
        // the bound. (A two-key advisory lock never meets the one-key lock
        // Weft's migrations take.)
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('wishlist.items'), hashtext($1))",
            &[&customer],
        )
        .await?;
        let existing = tx
            .query_opt(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM wishlist.items WHERE customer_id = $1 AND sku = $2"
                ),
                &[&customer, &product.sku],
            )
            .await?;
        if let Some(row) = existing {
            return Ok((item_from_row(&row), false));
        }
        let held: i64 = tx
            .query_one(
                "SELECT count(*) FROM wishlist.items WHERE customer_id = $1",
                &[&customer],
            )
            .await?
            .get(0);
        if held >= MAX_ITEMS {
            return Err(AddError::Full);
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO wishlist.items (customer_id, sku, name, price_minor, currency_code) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING {ITEM_COLUMNS}"
                ),
                &[
                    &customer,
                    &product.sku,
                    &product.name,
                    &product.unit_price.amount_minor,
                    &product.unit_price.currency_code,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok((item_from_row(&row), true))
    }

    /// Takes `sku` off `customer`'s list; whether it was there.
    pub async fn remove(&self, customer: &str, sku: &str) -> Result<bool, DbError> {
        let client = self.db.client().await?;
        let removed = client
            .execute(
                "DELETE FROM wishlist.items WHERE customer_id = $1 AND sku = $2",
                &[&customer, &sku],
            )
            .await?;
        Ok(removed > 0)
    }

    /// `customer`'s list, oldest item first.
    pub async fn list(&self, customer: &str) -> Result<Vec<Item>, DbError> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM wishlist.items WHERE customer_id = $1 \
                     ORDER BY add_time, sku"
                ),
                &[&customer],
            )
            .await?;
        Ok(rows.iter().map(item_from_row).collect())
    }
}

fn item_from_row(row: &Row) -> Item {
    Item {
        sku: row.get(0),
        name: row.get(1),
        unit_price: Money::new(row.get::<_, i64>(2), row.get::<_, String>(3)),
        add_time: row.get(4),
    }
}
