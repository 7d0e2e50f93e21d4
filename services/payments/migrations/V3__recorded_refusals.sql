-- A keyed call's lasting refusal (not found, out of stock, a state the
-- action cannot start from) is recorded under its key like a response, so a
-- late retry of the same call cannot succeed after its caller acted on the
-- refusal. A record holds a response or a refusal; while its first call runs
-- it holds neither.
ALTER TABLE payments.idempotency_keys
    ADD COLUMN refusal_code integer,
    ADD COLUMN refusal_message text,
    ADD CONSTRAINT idempotency_keys_one_answer
        CHECK (response IS NULL OR refusal_code IS NULL);
