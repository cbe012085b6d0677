-- The cascade: attempts per step, delivery events recorded once, learned reachability.

-- The cascade's state (router.cascade.CascadeState.to_dict()), changed only under a row lock.
ALTER TABLE kaskad_notifications
    ADD COLUMN cascade     jsonb,
    ADD COLUMN finished_at timestamptz;

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
