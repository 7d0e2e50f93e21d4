-- Wishlist's own schema: one row per product a customer wants, with the
-- product's name and price when it was added. Written to run again safely
-- (IF NOT EXISTS): the schema may exist before the first migration, made by
-- Weft's start-up or by `weft db bootstrap` with the service's roles.
CREATE SCHEMA IF NOT EXISTS wishlist;

CREATE TABLE IF NOT EXISTS wishlist.items (
    customer_id    text        NOT NULL,
    sku            text        NOT NULL,
    name           text        NOT NULL,
    price_minor    bigint      NOT NULL CHECK (price_minor >= 0),
    currency_code  text        NOT NULL,
    add_time       timestamptz NOT NULL DEFAULT now(),
    -- An item is on a list once: adding it again changes nothing.
    PRIMARY KEY (customer_id, sku)
);

-- ListItems reads one customer's list oldest first.
CREATE INDEX IF NOT EXISTS items_customer_added ON wishlist.items (customer_id, add_time, sku);
