-- Inventory's own schema: products with their stock counters, reservations,
-- an audit trail of stock movements, and the idempotency records.
CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE inventory.products (
    sku              text        PRIMARY KEY,
    name             text        NOT NULL,
    price_minor      bigint      NOT NULL CHECK (price_minor >= 0),
    currency_code    text        NOT NULL,
    -- The three counters: every unit received is in exactly one of them.
    available        bigint      NOT NULL CHECK (available >= 0),
    reserved         bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold             bigint      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    create_time      timestamptz NOT NULL DEFAULT now(),
    update_time      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inventory.reservations (
    reservation_id   text        PRIMARY KEY DEFAULT gen_random_uuid()::text,
    order_id         text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('HELD', 'COMMITTED', 'RELEASED', 'RETURNED')),
    create_time      timestamptz NOT NULL DEFAULT now(),
    update_time      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_order_id ON inventory.reservations (order_id);

CREATE TABLE inventory.reservation_lines (
    reservation_id   text        NOT NULL REFERENCES inventory.reservations (reservation_id),
    line_no          integer     NOT NULL,
    sku              text        NOT NULL REFERENCES inventory.products (sku),
    quantity         bigint      NOT NULL CHECK (quantity > 0),
    price_minor      bigint      NOT NULL,
    currency_code    text        NOT NULL,
    PRIMARY KEY (reservation_id, line_no)
);

-- Every change to a product's stock counters, so received stock can be audited:
-- available + reserved + sold = sum(delta) over kinds 'create' and 'adjust'.
CREATE TABLE inventory.stock_movements (
    movement_id      bigserial   PRIMARY KEY,
    sku              text        NOT NULL REFERENCES inventory.products (sku),
    kind             text        NOT NULL,
    delta            bigint      NOT NULL,
    reason           text        NOT NULL DEFAULT '',
    reservation_id   text,
    create_time      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_movements_sku ON inventory.stock_movements (sku);

-- One row per idempotency key: the request's fingerprint and the first response.
CREATE TABLE inventory.idempotency_keys (
    idempotency_key  text        PRIMARY KEY,
    fingerprint      bytea       NOT NULL,
    response         bytea,
    create_time      timestamptz NOT NULL DEFAULT now()
);
