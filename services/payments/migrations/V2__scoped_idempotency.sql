-- Idempotency records are scoped to their caller and method: one caller's
-- key never touches another caller's calls, nor the same key another
-- method's. Records made before (caller and method empty) keep answering
-- true retries until the sweeper ages them out of the replay window.
ALTER TABLE payments.idempotency_keys
    ADD COLUMN caller text NOT NULL DEFAULT '',
    ADD COLUMN method text NOT NULL DEFAULT '';
ALTER TABLE payments.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE payments.idempotency_keys ADD PRIMARY KEY (caller, method, idempotency_key);
-- The sweeper deletes by age.
CREATE INDEX idempotency_keys_create_time ON payments.idempotency_keys (create_time);
