-- An order's idempotency key is scoped to its caller: one caller's key
-- never touches another caller's orders. Orders placed before (caller
-- empty) keep answering true retries of the same request.
ALTER TABLE orders.orders ADD COLUMN caller text NOT NULL DEFAULT '';
ALTER TABLE orders.orders DROP CONSTRAINT orders_idempotency_key_key;
ALTER TABLE orders.orders ADD CONSTRAINT orders_caller_idempotency_key UNIQUE (caller, idempotency_key);
