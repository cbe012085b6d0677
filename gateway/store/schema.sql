-- The whole schema as the migrations leave it; tests/test_store.py compares the two.
CREATE TABLE kaskad_clients (
    client_id   uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    created_at  timestamptz NOT NULL,
    role        text        NOT NULL DEFAULT 'service' CHECK (role IN ('service', 'finance'))
);

-- Keys are random 256-bit secrets, so a plain SHA-256 is enough to make a leaked
-- table useless; a slow password hash would only slow every call down.
CREATE TABLE kaskad_api_keys (
    key_hash    bytea       PRIMARY KEY,
    client_id   uuid        NOT NULL REFERENCES kaskad_clients (client_id),
    key_prefix  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX kaskad_api_keys_client ON kaskad_api_keys (client_id);

CREATE TABLE kaskad_notifications (
    notification_id  uuid        PRIMARY KEY,
    client_id        uuid        NOT NULL REFERENCES kaskad_clients (client_id),
    idempotency_key  text        NOT NULL,
    -- SHA-256 of the canonical request: same key with other content is a conflict.
    request_hash     bytea       NOT NULL,
    phone            text        NOT NULL,
    vk_user_id       text,
    viber_user_id    text,
    template_id      text,
    template_params  jsonb,
    -- The rendered text per channel, rendered at accept time: {"vk": "...", "sms": "..."}.
    bodies           jsonb       NOT NULL,
    channels         text[]      NOT NULL,
    ack_policy       text        NOT NULL CHECK (ack_policy IN ('delivered', 'read')),
    ack_timeout      interval,
    deadline         timestamptz NOT NULL,
    max_cost         numeric(20, 9),
    currency         text        NOT NULL,
    metadata         jsonb       NOT NULL DEFAULT '{}',
    state            text        NOT NULL CHECK (state IN (
        'accepted', 'in_progress', 'delivered', 'read', 'failed', 'expired', 'cancelled')),
    route            jsonb       NOT NULL,
    -- The cascade's progress (router.cascade.CascadeState.progress_dict(); the plan is route),
    -- changed only under a row lock. Older rows may hold a copy of the plan here too (ignored).
    cascade          jsonb,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    -- What this notification would have cost by SMS alone (finance's baseline).
    sms_baseline     numeric(20, 9),
    -- The W3C trace context of the accepting call; the cascade's spans join that trace.
    traceparent      text,
    CONSTRAINT kaskad_notifications_idempotency UNIQUE (client_id, idempotency_key)
);
CREATE INDEX kaskad_notifications_created ON kaskad_notifications (created_at);

-- Durable work: every step, wait and fallback is a row with a due time, claimed with
-- FOR UPDATE SKIP LOCKED. A claim is a lease with a fencing token: a worker whose lease
-- expired cannot complete work that another worker has taken over.
CREATE TABLE kaskad_work_items (
    work_item_id     bigserial   PRIMARY KEY,
    notification_id  uuid        NOT NULL REFERENCES kaskad_notifications (notification_id),
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}',
    due_at           timestamptz NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    fencing_token    bigint      NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    done_at          timestamptz
);
CREATE INDEX kaskad_work_items_due ON kaskad_work_items (due_at) WHERE done_at IS NULL;
CREATE INDEX kaskad_work_items_due_started ON kaskad_work_items (due_at)
    WHERE done_at IS NULL AND kind <> 'start';
-- A notification's pending items (a finished cascade closes them).
CREATE INDEX kaskad_work_items_pending ON kaskad_work_items (notification_id)
    WHERE done_at IS NULL;

CREATE TABLE kaskad_attempts (
    attempt_id          uuid        PRIMARY KEY,
    notification_id     uuid        NOT NULL REFERENCES kaskad_notifications (notification_id),
    step_index          integer     NOT NULL,
    try_number          integer     NOT NULL DEFAULT 1,
    channel             text        NOT NULL,
    provider            text        NOT NULL,
    -- Sent to the provider on every retry of this attempt, so it never delivers twice.
    dedupe_key          text        NOT NULL UNIQUE,
    provider_message_id text,
    -- router.cascade.AttemptStatus and router.reachability.DeliveryOutcome values.
    status              text        NOT NULL,
    outcome             text,
    billed_units        integer,
    billed_amount       numeric(20, 9),
    currency            text        NOT NULL,
    -- A report that arrived after the cascade had moved on to a later step.
    late                boolean     NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    submitted_at        timestamptz,
    outcome_at          timestamptz,
    detail              text,
    CONSTRAINT kaskad_attempts_step UNIQUE (notification_id, step_index, try_number)
);
CREATE UNIQUE INDEX kaskad_attempts_provider_message
    ON kaskad_attempts (provider, provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Every callback event exactly once: a repeated callback hits the primary key.
CREATE TABLE kaskad_delivery_events (
    provider            text        NOT NULL,
    event_key           text        NOT NULL,
    provider_message_id text        NOT NULL,
    dedupe_key          text,
    kind                text        NOT NULL,
    occurred_at         timestamptz NOT NULL,
    received_at         timestamptz NOT NULL,
    billed_units        integer,
    billed_amount       numeric(20, 9),
    detail              text,
    attempt_id          uuid        REFERENCES kaskad_attempts (attempt_id),
    processed_at        timestamptz,
    PRIMARY KEY (provider, event_key)
);
CREATE INDEX kaskad_delivery_events_unmatched
    ON kaskad_delivery_events (provider, provider_message_id) WHERE processed_at IS NULL;

-- What Kaskad has learned about reaching a person on a channel (PostgreSQL is the truth;
-- Redis holds a hot copy). The phone is stored as a keyed hash, not the number.
CREATE TABLE kaskad_reachability (
    recipient_key text        NOT NULL,
    channel       text        NOT NULL,
    model         jsonb       NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (recipient_key, channel)
);

CREATE TABLE kaskad_channel_stats (
    channel    text        PRIMARY KEY,
    model      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL
);

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

-- The engine's locked read of people's reachability (see migration 0007: the read must
-- come after the lock, so it is a statement of its own inside a VOLATILE function).
CREATE OR REPLACE FUNCTION kaskad_locked_reachabilities(keys text[])
RETURNS TABLE (recipient_key text, channel text, model jsonb)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7001, hashtext(k))
    FROM (SELECT DISTINCT u.k FROM unnest(keys) AS u(k) ORDER BY u.k) AS ordered;
    RETURN QUERY
        SELECT r.recipient_key, r.channel, r.model FROM kaskad_reachability r
        WHERE r.recipient_key = ANY(keys);
END
$$;
