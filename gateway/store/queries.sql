-- Named queries, loaded by gateway/store/queries.py. Each starts with "-- name: NAME".
-- Times are always parameters (the injected clock), never now(), so tests and
-- `kaskad simulate` can move time.

-- name: insert_client
INSERT INTO kaskad_clients (client_id, name, created_at, role)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO NOTHING
RETURNING client_id;

-- name: get_client_by_name
SELECT client_id, name, created_at FROM kaskad_clients WHERE name = $1;

-- name: insert_api_key
INSERT INTO kaskad_api_keys (key_hash, client_id, key_prefix, created_at)
VALUES ($1, $2, $3, $4);

-- name: revoke_client_keys
UPDATE kaskad_api_keys SET revoked_at = $2
WHERE client_id = $1 AND revoked_at IS NULL;

-- name: authenticate
SELECT c.client_id, c.name, c.role
FROM kaskad_api_keys k JOIN kaskad_clients c USING (client_id)
WHERE k.key_hash = $1 AND k.revoked_at IS NULL;

-- name: list_clients
SELECT c.name, c.role, c.created_at,
       count(k.key_hash) FILTER (WHERE k.revoked_at IS NULL) AS active_keys
FROM kaskad_clients c LEFT JOIN kaskad_api_keys k USING (client_id)
GROUP BY c.client_id ORDER BY c.name;

-- name: set_client_role
UPDATE kaskad_clients SET role = $2 WHERE name = $1 RETURNING client_id;

-- name: insert_notification
-- The notification and its first work item in ONE statement (atomic, one round trip);
-- nothing is returned when the (client, key) pair exists already.
WITH notification AS (
    INSERT INTO kaskad_notifications (
        notification_id, client_id, idempotency_key, request_hash, phone, vk_user_id,
        viber_user_id, template_id, template_params, bodies, channels, ack_policy,
        ack_timeout, deadline, max_cost, currency, metadata, state, route, created_at, updated_at,
        sms_baseline, traceparent)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
            'accepted', $18, $19, $19, $20, $21)
    ON CONFLICT (client_id, idempotency_key) DO NOTHING
    RETURNING notification_id
)
INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at)
SELECT notification_id, 'start', '{}', $19, $19 FROM notification
RETURNING notification_id;

-- name: insert_notifications
-- Group commit (gateway/store/group_commit.py): insert_notification for many rows in ONE
-- statement, one array per column, each row with its first work item; rows whose
-- (client, key) pair exists already are skipped. JSON columns come as text, channels
-- as a comma-separated list (unnest cannot carry an array per row).
WITH notification AS (
    INSERT INTO kaskad_notifications (
        notification_id, client_id, idempotency_key, request_hash, phone, vk_user_id,
        viber_user_id, template_id, template_params, bodies, channels, ack_policy,
        ack_timeout, deadline, max_cost, currency, metadata, state, route, created_at, updated_at,
        sms_baseline, traceparent)
    SELECT r.notification_id, r.client_id, r.idempotency_key, r.request_hash, r.phone, r.vk_user_id,
           r.viber_user_id, r.template_id, r.template_params::jsonb, r.bodies::jsonb,
           string_to_array(r.channels, ','), r.ack_policy, r.ack_timeout, r.deadline, r.max_cost,
           r.currency, r.metadata::jsonb, 'accepted', r.route::jsonb, r.now, r.now,
           r.sms_baseline, r.traceparent
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::interval[], $14::timestamptz[], $15::numeric[], $16::text[], $17::text[],
                $18::text[], $19::timestamptz[], $20::numeric[], $21::text[])
        AS r(notification_id, client_id, idempotency_key, request_hash, phone, vk_user_id,
             viber_user_id, template_id, template_params, bodies, channels, ack_policy,
             ack_timeout, deadline, max_cost, currency, metadata, route, now, sms_baseline,
             traceparent)
    ON CONFLICT (client_id, idempotency_key) DO NOTHING
    RETURNING notification_id, created_at
)
INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at)
SELECT notification_id, 'start', '{}', created_at, created_at FROM notification
RETURNING notification_id;

-- name: get_notification_by_key
SELECT notification_id, request_hash, route
FROM kaskad_notifications WHERE client_id = $1 AND idempotency_key = $2;

-- name: get_notifications_by_keys
SELECT n.client_id, n.idempotency_key, n.notification_id, n.request_hash, n.route
FROM unnest($1::uuid[], $2::text[]) AS k(client_id, idempotency_key)
JOIN kaskad_notifications n
  ON n.client_id = k.client_id AND n.idempotency_key = k.idempotency_key;

-- name: insert_work_item
INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at)
VALUES ($1, $2, $3, $4, $5)
RETURNING work_item_id;

-- name: insert_work_items
-- The work items one engine transaction scheduled, in one statement (payloads as JSON text).
-- An item marked in $6 is inserted already leased to the worker that scheduled it ($7, for
-- $8): that worker runs it right after this commits (a submit due now), so no claim has to
-- find it first. Only those items are returned, as a claim returns them.
WITH inserted AS (
    INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at,
                                   lease_owner, lease_expires_at, fencing_token, attempts)
    SELECT w.notification_id, w.kind, w.payload::jsonb, w.due_at, $5::timestamptz,
           CASE WHEN w.leased THEN $7 END,
           CASE WHEN w.leased THEN $5::timestamptz + $8::interval END,
           CASE WHEN w.leased THEN 1 ELSE 0 END,
           CASE WHEN w.leased THEN 1 ELSE 0 END
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $6::boolean[])
        AS w(notification_id, kind, payload, due_at, leased)
    RETURNING work_item_id, notification_id, kind, payload, due_at, fencing_token, attempts,
              lease_owner IS NOT NULL AS leased
)
SELECT work_item_id, notification_id, kind, payload, due_at, fencing_token, attempts
FROM inserted WHERE leased
ORDER BY work_item_id;

-- name: get_notification
SELECT notification_id, client_id, idempotency_key, phone, vk_user_id, viber_user_id,
       template_id, channels, ack_policy, ack_timeout, deadline, max_cost, currency,
       metadata, state, route, created_at, updated_at
FROM kaskad_notifications WHERE notification_id = $1 AND client_id = $2;

-- name: close_pending_works
-- These cascades finished: nothing more will be sent for them. Delivery events still run (a
-- late report is recorded and billed), and a submit under way right now (leased) finishes
-- itself, so its result (message id, billing) is recorded too.
UPDATE kaskad_work_items SET done_at = $2
WHERE notification_id = ANY($1::uuid[]) AND done_at IS NULL AND kind <> 'event'
  AND NOT (kind = 'submit' AND lease_expires_at > $2);

-- name: claim_due_work
-- Claim due, unleased (or lease-expired) items; each claim bumps the fencing token so a
-- worker whose lease lapsed can no longer complete the item. Items of cascades under way
-- go first (their own index), then any due item (new cascades' starts), oldest first in
-- each; an item both scans found counts once. Rows locked but not taken are let go when
-- the statement commits.
WITH started AS (
    SELECT work_item_id, due_at, 0 AS rank FROM kaskad_work_items
    WHERE done_at IS NULL AND kind <> 'start' AND due_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY due_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), any_due AS (
    SELECT work_item_id, due_at, 1 AS rank FROM kaskad_work_items
    WHERE done_at IS NULL AND due_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY due_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT work_item_id FROM (
        SELECT DISTINCT ON (work_item_id) work_item_id, rank, due_at
        FROM (SELECT * FROM started UNION ALL SELECT * FROM any_due) found
        ORDER BY work_item_id, rank
    ) once
    ORDER BY rank, due_at
    LIMIT $2
)
UPDATE kaskad_work_items w
SET lease_owner = $3, lease_expires_at = $1 + $4::interval,
    fencing_token = w.fencing_token + 1, attempts = w.attempts + 1
FROM due WHERE w.work_item_id = due.work_item_id
RETURNING w.work_item_id, w.notification_id, w.kind, w.payload, w.due_at, w.fencing_token, w.attempts;

-- name: complete_works
-- Items whose fencing token no longer matches were taken over by another worker: they are
-- left alone and missing from what is returned.
UPDATE kaskad_work_items w SET done_at = $3, lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::bigint[], $2::bigint[]) AS c(work_item_id, fencing_token)
WHERE w.work_item_id = c.work_item_id AND w.fencing_token = c.fencing_token AND w.done_at IS NULL
RETURNING w.work_item_id;

-- name: release_work
-- Give an item back (after a crash-free failure) to run again at $3.
UPDATE kaskad_work_items SET due_at = $3, lease_owner = NULL, lease_expires_at = NULL
WHERE work_item_id = $1 AND fencing_token = $2 AND done_at IS NULL
RETURNING work_item_id;

-- name: work_backlog
SELECT count(*) AS due, min(due_at) AS oldest_due
FROM kaskad_work_items WHERE done_at IS NULL AND due_at <= $1;

-- name: notify_work
-- Wake other gateways' workers (gateway.store.wake): delivered when this commits.
SELECT pg_notify($1, '');

-- name: record_delivery_events
-- Callback events, each stored once, in ONE statement: each new event is matched to its
-- attempt (by the dedupe key when the provider echoes it, else by the provider's message id)
-- and a matched one gets its work item. An event whose attempt is not known yet (the
-- callback beat the submit response) waits unmatched: recording the submit queues it.
-- Returns the events that were new.
WITH incoming AS (
    SELECT e.*, a.attempt_id, a.notification_id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                $7::int[], $8::numeric[], $9::text[])
        AS e(provider, event_key, provider_message_id, dedupe_key, kind, occurred_at,
             billed_units, billed_amount, detail)
    LEFT JOIN LATERAL (
        SELECT attempt_id, notification_id FROM kaskad_attempts a
        WHERE a.provider = e.provider
          AND (a.dedupe_key = e.dedupe_key OR a.provider_message_id = e.provider_message_id)
        LIMIT 1
    ) a ON true
), inserted AS (
    INSERT INTO kaskad_delivery_events (provider, event_key, provider_message_id, dedupe_key, kind,
        occurred_at, received_at, billed_units, billed_amount, detail, attempt_id)
    SELECT provider, event_key, provider_message_id, dedupe_key, kind, occurred_at, $10,
           billed_units, billed_amount, detail, attempt_id
    FROM incoming
    ON CONFLICT (provider, event_key) DO NOTHING
    RETURNING provider, event_key, attempt_id
), queued AS (
    INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at)
    SELECT i.notification_id, 'event',
           jsonb_build_object('provider', i.provider, 'event_key', i.event_key), $10, $10
    FROM inserted n JOIN incoming i USING (provider, event_key)
    WHERE n.attempt_id IS NOT NULL
)
SELECT provider, event_key FROM inserted;

-- name: match_event
UPDATE kaskad_delivery_events SET attempt_id = $3
WHERE provider = $1 AND event_key = $2;

-- name: unmatched_events_for_messages
-- Callbacks that arrived before the submit response was recorded, for many messages.
SELECT e.provider, e.event_key, e.provider_message_id
FROM unnest($1::text[], $2::text[]) AS m(provider, provider_message_id)
JOIN kaskad_delivery_events e
  ON e.provider = m.provider AND e.provider_message_id = m.provider_message_id
WHERE e.attempt_id IS NULL AND e.processed_at IS NULL;

-- name: lock_notifications
-- In the order of the ids, so that transactions locking overlapping sets cannot deadlock.
-- The route (the plan) as text: the engine decodes it only when it has not got it already
-- (gateway.store.cascade.PlanCache); the cascade holds the progress through the plan.
SELECT notification_id, client_id, phone, vk_user_id, viber_user_id, bodies, channels,
       ack_policy, deadline, currency, state, route::text AS route, cascade, traceparent
FROM kaskad_notifications WHERE notification_id = ANY($1::uuid[])
ORDER BY notification_id
-- NO KEY UPDATE: callbacks inserting work items (a foreign key's KEY SHARE) need not wait.
FOR NO KEY UPDATE;

-- name: read_notifications_for_submit
SELECT notification_id, phone, vk_user_id, viber_user_id, bodies, channels, ack_policy,
       deadline, currency, state, route::text AS route, cascade, traceparent,
       xmin::text::bigint AS version
FROM kaskad_notifications WHERE notification_id = ANY($1::uuid[]);

-- name: lock_notification_versions
-- lock_notifications without the row's content: its version (the transaction that wrote
-- it, xmin) says whether what was read before the lock is still current.
SELECT notification_id, xmin::text::bigint AS version
FROM kaskad_notifications WHERE notification_id = ANY($1::uuid[])
ORDER BY notification_id
FOR NO KEY UPDATE;

-- name: save_cascades
UPDATE kaskad_notifications n
SET cascade = c.cascade::jsonb, state = c.state, updated_at = $4,
    finished_at = CASE WHEN c.state IN ('delivered', 'read', 'failed', 'expired', 'cancelled')
                       THEN coalesce(n.finished_at, $4) ELSE NULL END
FROM unnest($1::uuid[], $2::text[], $3::text[]) AS c(notification_id, cascade, state)
WHERE n.notification_id = c.notification_id
-- The rows' new versions (see read_notifications_for_submit): a submit run right after this
-- commits can take its lock without reading the row again (lock_notification_versions).
RETURNING n.notification_id, n.xmin::text::bigint AS version;

-- name: list_attempts
SELECT attempt_id, notification_id, step_index, try_number, channel, provider, dedupe_key,
       provider_message_id, status, outcome, billed_units, billed_amount, currency, late,
       created_at, submitted_at, outcome_at, detail
FROM kaskad_attempts WHERE notification_id = $1
ORDER BY step_index, try_number;

-- name: get_attempts_by_steps
SELECT a.attempt_id, a.notification_id, a.step_index, a.try_number, a.channel, a.provider,
       a.dedupe_key, a.provider_message_id, a.status, a.outcome, a.billed_units, a.billed_amount,
       a.currency, a.late, a.created_at, a.submitted_at, a.outcome_at, a.detail
FROM unnest($1::uuid[], $2::int[], $3::int[]) AS k(notification_id, step_index, try_number)
JOIN kaskad_attempts a
  ON a.notification_id = k.notification_id AND a.step_index = k.step_index
 AND a.try_number = k.try_number;

-- name: get_attempts
SELECT attempt_id, notification_id, step_index, try_number, channel, provider, dedupe_key,
       provider_message_id, status, outcome, billed_units, billed_amount, currency, late,
       created_at, submitted_at, outcome_at, detail
FROM kaskad_attempts WHERE attempt_id = ANY($1::uuid[]);

-- name: insert_attempts
INSERT INTO kaskad_attempts (attempt_id, notification_id, step_index, try_number, channel,
    provider, dedupe_key, status, currency, created_at, updated_at)
SELECT a.attempt_id, a.notification_id, a.step_index, a.try_number, a.channel, a.provider,
       a.dedupe_key, a.status, a.currency, $10, $10
FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[])
    AS a(attempt_id, notification_id, step_index, try_number, channel, provider, dedupe_key,
         status, currency)
ON CONFLICT (notification_id, step_index, try_number) DO NOTHING;

-- name: sync_attempts
-- Project the cascade's view of attempts onto their rows.
UPDATE kaskad_attempts a
SET status = s.status, outcome = s.outcome, late = s.late,
    submitted_at = coalesce(a.submitted_at, s.submitted_at), outcome_at = s.outcome_at,
    updated_at = $9
FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[], $5::text[], $6::bool[],
            $7::timestamptz[], $8::timestamptz[])
    AS s(notification_id, step_index, try_number, status, outcome, late, submitted_at, outcome_at)
WHERE a.notification_id = s.notification_id AND a.step_index = s.step_index
  AND a.try_number = s.try_number
  AND (a.status, a.outcome, a.late, a.outcome_at)
      IS DISTINCT FROM (s.status, s.outcome, s.late, s.outcome_at);

-- name: record_submits
-- What a submit billed never overwrites what a report already said was billed.
UPDATE kaskad_attempts a
SET provider_message_id = coalesce(r.provider_message_id, a.provider_message_id),
    billed_units = coalesce(a.billed_units, r.billed_units),
    billed_amount = coalesce(a.billed_amount, r.billed_amount),
    detail = coalesce(r.detail, a.detail), updated_at = $6
FROM unnest($1::uuid[], $2::text[], $3::int[], $4::numeric[], $5::text[])
    AS r(attempt_id, provider_message_id, billed_units, billed_amount, detail)
WHERE a.attempt_id = r.attempt_id;

-- name: record_billings
-- What delivery reports said an attempt was billed, one row per attempt.
UPDATE kaskad_attempts a
SET billed_units = coalesce(b.units, a.billed_units), billed_amount = coalesce(b.amount, a.billed_amount),
    updated_at = $4
FROM unnest($1::uuid[], $2::int[], $3::numeric[]) AS b(attempt_id, units, amount)
WHERE a.attempt_id = b.attempt_id;

-- name: get_delivery_events
SELECT e.provider, e.event_key, e.provider_message_id, e.dedupe_key, e.kind, e.occurred_at,
       e.received_at, e.billed_units, e.billed_amount, e.detail, e.attempt_id, e.processed_at
FROM unnest($1::text[], $2::text[]) AS k(provider, event_key)
JOIN kaskad_delivery_events e ON e.provider = k.provider AND e.event_key = k.event_key;

-- name: mark_events_processed
UPDATE kaskad_delivery_events e
SET processed_at = $4, attempt_id = coalesce(e.attempt_id, p.attempt_id)
FROM unnest($1::text[], $2::text[], $3::uuid[]) AS p(provider, event_key, attempt_id)
WHERE e.provider = p.provider AND e.event_key = p.event_key;

-- name: lock_recipients
-- Lock people whose reachability this transaction is about to read and update: without it
-- two transactions observing one person read the same row, and the second upsert drops the
-- first one's outcome. A transaction-scoped advisory lock per person (class 7001, the key's
-- hash; the two-int4 lock space, apart from the migration lock) also covers people without
-- a row yet, which a row lock cannot; taken in key order, one order for every transaction.
-- A statement of its own: a statement's snapshot is taken before it waits for a lock, so
-- the read must come after (get_reachabilities).
SELECT pg_advisory_xact_lock(7001, hashtext(k))
FROM (SELECT DISTINCT k FROM unnest($1::text[]) AS u(k) ORDER BY k) AS keys;

-- name: get_reachabilities
-- The people's rows: the planner's misses of the Redis hot copy, read together, and the
-- engine's read after lock_recipients.
SELECT recipient_key, channel, model FROM kaskad_reachability
WHERE recipient_key = ANY($1::text[]);

-- name: upsert_reachabilities
-- After lock_recipients in the same transaction; sorted by the caller (recipient, channel).
INSERT INTO kaskad_reachability (recipient_key, channel, model, updated_at)
SELECT r.recipient_key, r.channel, r.model::jsonb, r.updated_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
    AS r(recipient_key, channel, model, updated_at)
ON CONFLICT (recipient_key, channel) DO UPDATE
SET model = excluded.model, updated_at = excluded.updated_at;

-- name: get_channel_stats
SELECT channel, model FROM kaskad_channel_stats;

-- name: lock_channel_stats
SELECT channel, model FROM kaskad_channel_stats ORDER BY channel FOR UPDATE;

-- name: upsert_channel_stats
INSERT INTO kaskad_channel_stats (channel, model, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (channel) DO UPDATE SET model = $2, updated_at = $3;

-- name: reprice_ledgers
-- The provider reported what it billed for attempts booked at the price book's price:
-- its word wins; the price book's amount stays beside it. Returns the old amounts.
UPDATE kaskad_ledger l SET amount = b.amount, billed_units = b.units
FROM unnest($1::uuid[], $2::numeric[], $3::int[]) AS b(attempt_id, amount, units), kaskad_ledger old
WHERE l.attempt_id = b.attempt_id AND old.entry_id = l.entry_id AND l.amount <> b.amount
RETURNING l.attempt_id, old.amount;

-- name: book_ledgers
-- One entry per billed attempt; an attempt booked already keeps its entry (not returned).
INSERT INTO kaskad_ledger (attempt_id, notification_id, client_id, template_id, channel, provider,
    billed_units, amount, price_book_amount, currency, billed_at)
SELECT a.attempt_id, a.notification_id, n.client_id, n.template_id, a.channel, a.provider,
       b.units, b.amount, b.price_book_amount, a.currency, $5
FROM unnest($1::uuid[], $2::int[], $3::numeric[], $4::numeric[])
     AS b(attempt_id, units, amount, price_book_amount)
JOIN kaskad_attempts a ON a.attempt_id = b.attempt_id
JOIN kaskad_notifications n ON n.notification_id = a.notification_id
ORDER BY a.attempt_id
ON CONFLICT (attempt_id) DO NOTHING
RETURNING attempt_id;

-- name: cost_report
-- {group_columns}, {group_by} and {order_by} are filled from a fixed whitelist in
-- gateway/store/ledger.py, never from input. Money is NUMERIC end to end.
WITH attempts AS (
    SELECT a.notification_id, a.channel, a.provider, c.name AS client,
           coalesce(n.template_id, '') AS template,
           to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
           coalesce(a.outcome IN ('delivered', 'read', 'answered'), false) AS reached,
           l.billed_units, l.amount, l.price_book_amount
    FROM kaskad_attempts a
    JOIN kaskad_notifications n USING (notification_id)
    JOIN kaskad_clients c ON c.client_id = n.client_id
    LEFT JOIN kaskad_ledger l ON l.attempt_id = a.attempt_id
    WHERE a.created_at >= $1 AND a.created_at < $2
      AND (cardinality($3::text[]) = 0 OR a.channel = ANY($3::text[]))
      AND (cardinality($4::text[]) = 0 OR a.provider = ANY($4::text[]))
      AND (cardinality($5::text[]) = 0 OR c.name = ANY($5::text[]))
      AND (cardinality($6::text[]) = 0 OR n.template_id = ANY($6::text[]))
)
SELECT {group_columns}
       count(DISTINCT notification_id) AS notifications,
       count(*) AS attempts,
       count(DISTINCT notification_id) FILTER (WHERE reached) AS delivered,
       coalesce(sum(billed_units), 0) AS billed_units,
       coalesce(sum(amount), 0) AS total_cost,
       coalesce(sum(price_book_amount), 0) AS price_book_cost,
       coalesce(sum(amount) FILTER (WHERE NOT reached), 0) AS fallback_spend,
       (SELECT coalesce(sum(b.sms_baseline), 0) FROM kaskad_notifications b
        WHERE b.notification_id IN (SELECT notification_id FROM attempts WHERE reached)) AS sms_baseline
FROM attempts
{group_by}
{order_by};

-- name: simulate_outcomes
-- kaskad simulate: every notification of a client, when it was accepted and when (and on
-- which channel) a report first said it reached the person.
SELECT n.notification_id, n.created_at, r.outcome_at AS reached_at, r.channel
FROM kaskad_notifications n
LEFT JOIN LATERAL (
    SELECT a.outcome_at, a.channel FROM kaskad_attempts a
    WHERE a.notification_id = n.notification_id AND a.outcome IN ('delivered', 'read', 'answered')
    ORDER BY a.outcome_at LIMIT 1
) r ON true
WHERE n.client_id = $1;

-- name: simulate_attempts
-- kaskad simulate: a client's attempts per channel, and those billed without reaching the person.
SELECT a.channel, count(*) AS attempts,
       count(*) FILTER (WHERE l.attempt_id IS NOT NULL
                        AND NOT coalesce(a.outcome IN ('delivered', 'read', 'answered'), false)) AS paid_failed
FROM kaskad_attempts a
JOIN kaskad_notifications n USING (notification_id)
LEFT JOIN kaskad_ledger l ON l.attempt_id = a.attempt_id
WHERE n.client_id = $1
GROUP BY a.channel
ORDER BY a.channel;
