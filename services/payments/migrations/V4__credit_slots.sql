-- Money coming into an account, spread over slots: a credit (a capture into a
-- merchant, a deposit, a refund back to a customer) adds to one of the
-- account's slots, chosen per transaction, instead of to the account's own
-- row, so concurrent credits to one busy account do not queue on one row's
-- lock until each commits. An account's balance is its row's plus its
-- slots'. Whatever takes money out or holds it first locks the row and folds
-- the slots into it, so the row's limit check sees the whole balance. The
-- ledger is untouched: every transaction's entries still balance at commit.
CREATE TABLE payments.account_slots (
    account_id      text        NOT NULL REFERENCES payments.accounts (account_id),
    slot            smallint    NOT NULL CHECK (slot >= 0 AND slot < 16),
    balance_minor   bigint      NOT NULL CHECK (balance_minor > 0),
    PRIMARY KEY (account_id, slot)
);
