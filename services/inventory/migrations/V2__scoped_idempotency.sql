-- Idempotency records are scoped to their caller and method: one caller's
-- key never touches another caller's calls, nor the same key another
-- method's. Records made before (caller and method empty) keep answering
-- true retries until the sweeper ages them out of the replay window.
ALTER TABLE inventory.idempotency_keys
    ADD COLUMN caller text NOT NULL DEFAULT '',
    ADD COLUMN method text NOT NULL DEFAULT '';
ALTER TABLE inventory.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE inventory.idempotency_keys ADD PRIMARY KEY (caller, method, idempotency_key);
-- The sweeper deletes by age.
CREATE INDEX idempotency_keys_create_time ON inventory.idempotency_keys (create_time);
