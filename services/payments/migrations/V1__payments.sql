-- Payments' own schema: accounts, authorizations, an append-only double-entry
-- ledger whose every transaction balances per currency (checked at commit),
-- and the idempotency records.
CREATE SCHEMA IF NOT EXISTS payments;

-- An account's balance is the sum of its ledger entries; money held by open
-- authorizations sits in the account's 'hold' book, so holding moves money
-- between the account's two books and leaves the balance unchanged.
CREATE TABLE payments.accounts (
    account_id          text        PRIMARY KEY DEFAULT gen_random_uuid()::text,
    owner               text        NOT NULL,
    currency_code       text        NOT NULL,
    -- 'customer' accounts are opened by callers; one 'funding' account per
    -- currency is the other side of every deposit and may go negative.
    kind                text        NOT NULL CHECK (kind IN ('customer', 'funding')),
    credit_limit_minor  bigint      NOT NULL CHECK (credit_limit_minor >= 0),
    balance_minor       bigint      NOT NULL DEFAULT 0,
    held_minor          bigint      NOT NULL DEFAULT 0 CHECK (held_minor >= 0),
    create_time         timestamptz NOT NULL DEFAULT now(),
    -- No customer account goes below its allowed limit, whatever the code does.
    CONSTRAINT within_limit CHECK (
        kind = 'funding' OR balance_minor - held_minor + credit_limit_minor >= 0
    )
);
CREATE UNIQUE INDEX accounts_funding_currency ON payments.accounts (currency_code)
    WHERE kind = 'funding';

CREATE TABLE payments.authorizations (
    authorization_id    text        PRIMARY KEY DEFAULT gen_random_uuid()::text,
    account_id          text        NOT NULL REFERENCES payments.accounts (account_id),
    reference           text        NOT NULL,
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    currency_code       text        NOT NULL,
    captured_minor      bigint      NOT NULL DEFAULT 0 CHECK (captured_minor >= 0),
    refunded_minor      bigint      NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    payee_account_id    text        REFERENCES payments.accounts (account_id),
    status              text        NOT NULL
        CHECK (status IN ('AUTHORIZED', 'DECLINED', 'CAPTURED', 'VOIDED')),
    decline_reason      text,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    CHECK (refunded_minor <= captured_minor AND captured_minor <= amount_minor)
);
CREATE INDEX authorizations_reference ON payments.authorizations (reference);
CREATE INDEX authorizations_account ON payments.authorizations (account_id);

CREATE TABLE payments.ledger_entries (
    entry_id            bigserial   PRIMARY KEY,
    -- The entries of one transaction sum to zero in each currency.
    transaction_id      text        NOT NULL,
    account_id          text        NOT NULL REFERENCES payments.accounts (account_id),
    book                text        NOT NULL CHECK (book IN ('main', 'hold')),
    amount_minor        bigint      NOT NULL CHECK (amount_minor <> 0),
    currency_code       text        NOT NULL,
    kind                text        NOT NULL
        CHECK (kind IN ('DEPOSIT', 'HOLD', 'CAPTURE', 'VOID', 'REFUND')),
    authorization_id    text        REFERENCES payments.authorizations (authorization_id),
    create_time         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_account ON payments.ledger_entries (account_id, entry_id);
CREATE INDEX ledger_entries_transaction ON payments.ledger_entries (transaction_id);

-- Checked at commit (a deferred constraint trigger): a transaction whose
-- entries do not sum to zero in every currency is rolled back.
CREATE FUNCTION payments.check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM payments.ledger_entries
        WHERE transaction_id = NEW.transaction_id
        GROUP BY currency_code HAVING sum(amount_minor) <> 0
    ) THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', NEW.transaction_id;
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_balanced
    AFTER INSERT ON payments.ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION payments.check_balanced();

-- The ledger is append-only: corrections are new entries.
CREATE FUNCTION payments.forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only';
END $$;
CREATE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE ON payments.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION payments.forbid_change();

-- One row per idempotency key: the request's fingerprint and the first response.
CREATE TABLE payments.idempotency_keys (
    idempotency_key     text        PRIMARY KEY,
    fingerprint         bytea       NOT NULL,
    response            bytea,
    create_time         timestamptz NOT NULL DEFAULT now()
);
