-- Orders' own schema: each order with its saga's durable state (the step it
-- is at, what the earlier steps produced, and who is driving it), its lines,
-- and a log of every step taken.
CREATE SCHEMA IF NOT EXISTS orders;

CREATE TABLE orders.orders (
    order_id            text        PRIMARY KEY DEFAULT gen_random_uuid()::text,
    -- Newest-first listing and page tokens.
    seq                 bigserial   UNIQUE,
    idempotency_key     text        NOT NULL UNIQUE,
    fingerprint         bytea       NOT NULL,
    customer_id         text        NOT NULL,
    payment_account_id  text        NOT NULL,
    status              text        NOT NULL
        CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    -- The next saga step; 'DONE' once the order is settled.
    step                text        NOT NULL,
    rejection_code      text,
    rejection_message   text,
    reservation_id      text,
    authorization_id    text,
    -- Whether money is held (an authorization that was not declined) and
    -- whether the reserved stock was sold: compensation depends on both.
    authorized          boolean     NOT NULL DEFAULT false,
    committed           boolean     NOT NULL DEFAULT false,
    total_minor         bigint,
    currency_code       text,
    cancel_reason       text,
    -- Retries of a step that failed for a passing reason.
    attempts            integer     NOT NULL DEFAULT 0,
    next_attempt_time   timestamptz NOT NULL DEFAULT now(),
    -- Who drives the saga, and until when; another instance takes it over
    -- once the lease runs out.
    lease_owner         text,
    lease_until         timestamptz,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders.orders (customer_id, seq);
CREATE INDEX orders_unsettled ON orders.orders (next_attempt_time) WHERE step <> 'DONE';

CREATE TABLE orders.order_lines (
    order_id            text        NOT NULL REFERENCES orders.orders (order_id),
    line_no             integer     NOT NULL,
    sku                 text        NOT NULL,
    quantity            bigint      NOT NULL CHECK (quantity > 0),
    -- Priced by inventory when the stock is reserved.
    unit_price_minor    bigint,
    currency_code       text,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE orders.saga_log (
    entry_id            bigserial   PRIMARY KEY,
    order_id            text        NOT NULL REFERENCES orders.orders (order_id),
    from_step           text        NOT NULL,
    to_step             text        NOT NULL,
    detail              text        NOT NULL DEFAULT '',
    owner               text        NOT NULL,
    create_time         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_log_order ON orders.saga_log (order_id, entry_id);
