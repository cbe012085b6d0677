-- The whole schema as the migrations leave it; tests/test_schema.py compares the two.
-- Calling services, their API keys, notifications and the work queue.

CREATE TABLE kaskad_clients (
    client_id   uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    created_at  timestamptz NOT NULL
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
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
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
CREATE INDEX kaskad_work_items_notification ON kaskad_work_items (notification_id);
