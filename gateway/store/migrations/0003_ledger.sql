-- The cost ledger: exactly one entry per billed attempt, written in the same transaction
-- as the outcome that bills it, and what the same notification would have cost by SMS.

ALTER TABLE kaskad_notifications ADD COLUMN sms_baseline numeric(20, 9);

CREATE TABLE kaskad_ledger (
    entry_id          bigserial      PRIMARY KEY,
    -- One billed attempt books once: a repeated or late callback hits this constraint.
    attempt_id        uuid           NOT NULL UNIQUE REFERENCES kaskad_attempts (attempt_id),
    notification_id   uuid           NOT NULL REFERENCES kaskad_notifications (notification_id),
    client_id         uuid           NOT NULL REFERENCES kaskad_clients (client_id),
    template_id       text,
    channel           text           NOT NULL,
    provider          text           NOT NULL,
    billed_units      integer        NOT NULL CHECK (billed_units >= 0),
    -- What the provider billed (its reported price wins) and what the price book said.
    amount            numeric(20, 9) NOT NULL CHECK (amount >= 0),
    price_book_amount numeric(20, 9) NOT NULL,
    currency          text           NOT NULL,
    billed_at         timestamptz    NOT NULL
);
CREATE INDEX kaskad_ledger_billed_at ON kaskad_ledger (billed_at);
CREATE INDEX kaskad_attempts_created ON kaskad_attempts (created_at);
