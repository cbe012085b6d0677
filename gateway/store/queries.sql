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

-- name: get_notification
SELECT notification_id, client_id, idempotency_key, phone, vk_user_id, viber_user_id,
       template_id, channels, ack_policy, ack_timeout, deadline, max_cost, currency,
       metadata, state, route, created_at, updated_at
FROM kaskad_notifications WHERE notification_id = $1 AND client_id = $2;

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

-- name: complete_works_reading_events
-- complete_works for start, timer and event items, and in the same statement what the held
-- event items report: each one's delivery event (e_ columns) and the attempt it was matched
-- to (a_ columns). One row per item still held; items fenced out are missing, as there.
WITH done AS (
    UPDATE kaskad_work_items w SET done_at = $3, lease_owner = NULL, lease_expires_at = NULL
    FROM unnest($1::bigint[], $2::bigint[]) AS c(work_item_id, fencing_token)
    WHERE w.work_item_id = c.work_item_id AND w.fencing_token = c.fencing_token AND w.done_at IS NULL
    RETURNING w.work_item_id, w.kind, w.payload
)
SELECT d.work_item_id,
       e.provider AS e_provider, e.event_key AS e_event_key,
       e.provider_message_id AS e_provider_message_id, e.kind AS e_kind,
       e.occurred_at AS e_occurred_at, e.billed_units AS e_billed_units,
       e.billed_amount AS e_billed_amount, e.detail AS e_detail, e.attempt_id AS e_attempt_id,
       e.processed_at AS e_processed_at,
       a.attempt_id AS a_attempt_id, a.notification_id AS a_notification_id,
       a.step_index AS a_step_index, a.try_number AS a_try_number, a.channel AS a_channel,
       a.provider AS a_provider, a.dedupe_key AS a_dedupe_key,
       a.provider_message_id AS a_provider_message_id, a.status AS a_status,
       a.outcome AS a_outcome, a.billed_units AS a_billed_units, a.billed_amount AS a_billed_amount,
       a.currency AS a_currency, a.late AS a_late, a.created_at AS a_created_at,
       a.submitted_at AS a_submitted_at, a.outcome_at AS a_outcome_at, a.detail AS a_detail
FROM done d
LEFT JOIN kaskad_delivery_events e
  ON d.kind = 'event' AND e.provider = d.payload->>'provider' AND e.event_key = d.payload->>'event_key'
LEFT JOIN kaskad_attempts a ON a.attempt_id = e.attempt_id;

-- name: complete_submits_reading_attempts
-- complete_works for submit items, and in the same statement the attempt row each held
-- item's payload names (its columns NULL when there is none).
WITH done AS (
    UPDATE kaskad_work_items w SET done_at = $3, lease_owner = NULL, lease_expires_at = NULL
    FROM unnest($1::bigint[], $2::bigint[]) AS c(work_item_id, fencing_token)
    WHERE w.work_item_id = c.work_item_id AND w.fencing_token = c.fencing_token AND w.done_at IS NULL
    RETURNING w.work_item_id, w.notification_id, w.payload
)
SELECT d.work_item_id, a.attempt_id, a.notification_id, a.step_index, a.try_number, a.channel,
       a.provider, a.dedupe_key, a.provider_message_id, a.status, a.outcome, a.billed_units,
       a.billed_amount, a.currency, a.late, a.created_at, a.submitted_at, a.outcome_at, a.detail
FROM done d
LEFT JOIN kaskad_attempts a
  ON a.notification_id = d.notification_id AND a.step_index = (d.payload->>'step_index')::int
 AND a.try_number = (d.payload->>'attempt')::int;

-- name: write_cascade_batch
-- Everything one engine transaction decided, in ONE statement (gateway.store.cascade
-- CascadeStore.write_batch): the finished cascades' pending items closed, new work items,
-- the cascade states, new attempt rows and the changes of existing ones, the people's
-- reachability (after locked_reachabilities), and the delivery events applied. The parts
-- touch disjoint rows; each sees the database as it was before the statement, so the close
-- leaves this statement's new items open, as it must. Returns the new items leased to $8
-- (inserted as a claim leaves them: fencing token 1) and the saved rows' versions (xmin, see
-- read_notifications_for_submit), told apart by `what`.
-- A finished cascade sends nothing more, but its delivery events still run (a late report
-- is recorded and billed), and a submit under way right now (leased) finishes itself, so
-- its result (message id, billing) is recorded too. The versions let a submit run right
-- after this commits take its lock without reading the row again (lock_notification_versions).
-- The close is driven by the ids through the index of pending items per notification
-- (kaskad_work_items_pending): it costs nothing when no cascade finished.
WITH closed AS (
    UPDATE kaskad_work_items w SET done_at = $2
    FROM unnest($1::uuid[]) AS f(notification_id)
    WHERE w.notification_id = f.notification_id AND w.done_at IS NULL AND w.kind <> 'event'
      AND NOT (w.kind = 'submit' AND w.lease_expires_at > $2)
), inserted AS (
    INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at,
                                   lease_owner, lease_expires_at, fencing_token, attempts)
    SELECT w.notification_id, w.kind, w.payload::jsonb, w.due_at, $2::timestamptz,
           CASE WHEN w.leased THEN $8 END,
           CASE WHEN w.leased THEN $2::timestamptz + $9::interval END,
           CASE WHEN w.leased THEN 1 ELSE 0 END,
           CASE WHEN w.leased THEN 1 ELSE 0 END
    FROM unnest($3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::boolean[])
        AS w(notification_id, kind, payload, due_at, leased)
    RETURNING work_item_id, notification_id, kind, payload, due_at, fencing_token, attempts,
              lease_owner IS NOT NULL AS leased
), saved AS (
    UPDATE kaskad_notifications n
    SET cascade = c.cascade::jsonb, state = c.state, updated_at = $2,
        finished_at = CASE WHEN c.state IN ('delivered', 'read', 'failed', 'expired', 'cancelled')
                           THEN coalesce(n.finished_at, $2) ELSE NULL END
    FROM unnest($10::uuid[], $11::text[], $12::text[]) AS c(notification_id, cascade, state)
    WHERE n.notification_id = c.notification_id
    RETURNING n.notification_id, n.xmin::text::bigint AS version
), new_attempts AS (
    INSERT INTO kaskad_attempts (attempt_id, notification_id, step_index, try_number, channel,
        provider, dedupe_key, status, outcome, late, submitted_at, outcome_at, currency,
        created_at, updated_at)
    SELECT a.attempt_id, a.notification_id, a.step_index, a.try_number, a.channel, a.provider,
           a.dedupe_key, a.status, a.outcome, a.late, a.submitted_at, a.outcome_at, a.currency,
           $2, $2
    FROM unnest($13::uuid[], $14::uuid[], $15::int[], $16::int[], $17::text[], $18::text[],
                $19::text[], $20::text[], $21::text[], $22::bool[], $23::timestamptz[],
                $24::timestamptz[], $25::text[])
        AS a(attempt_id, notification_id, step_index, try_number, channel, provider, dedupe_key,
             status, outcome, late, submitted_at, outcome_at, currency)
    ON CONFLICT (notification_id, step_index, try_number) DO NOTHING
), synced AS (
    UPDATE kaskad_attempts a
    SET status = s.status, outcome = s.outcome, late = s.late,
        submitted_at = coalesce(a.submitted_at, s.submitted_at), outcome_at = s.outcome_at,
        updated_at = $2
    FROM unnest($26::uuid[], $27::int[], $28::int[], $29::text[], $30::text[], $31::bool[],
                $32::timestamptz[], $33::timestamptz[])
        AS s(notification_id, step_index, try_number, status, outcome, late, submitted_at, outcome_at)
    WHERE a.notification_id = s.notification_id AND a.step_index = s.step_index
      AND a.try_number = s.try_number
      AND (a.status, a.outcome, a.late, a.outcome_at)
          IS DISTINCT FROM (s.status, s.outcome, s.late, s.outcome_at)
), learnt AS (
    INSERT INTO kaskad_reachability (recipient_key, channel, model, updated_at)
    SELECT r.recipient_key, r.channel, r.model::jsonb, r.updated_at
    FROM unnest($34::text[], $35::text[], $36::text[], $37::timestamptz[])
        AS r(recipient_key, channel, model, updated_at)
    ON CONFLICT (recipient_key, channel) DO UPDATE
    SET model = excluded.model, updated_at = excluded.updated_at
), processed AS (
    UPDATE kaskad_delivery_events e
    SET processed_at = $2, attempt_id = coalesce(e.attempt_id, p.attempt_id)
    FROM unnest($38::text[], $39::text[], $40::uuid[]) AS p(provider, event_key, attempt_id)
    WHERE e.provider = p.provider AND e.event_key = p.event_key
)
SELECT 'work' AS what, work_item_id, notification_id, kind, payload, due_at, fencing_token,
       attempts, NULL::bigint AS version
FROM inserted WHERE leased
UNION ALL
SELECT 'version', NULL, notification_id, NULL, NULL, NULL, NULL, NULL, version FROM saved
ORDER BY what, work_item_id;

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

-- name: record_submits
-- What submits returned, on their attempts; what a submit billed never overwrites what a
-- report already said was billed. In the same statement, the callbacks that arrived before
-- these responses ($7: each attempt's provider; the named messages), to be matched now.
WITH recorded AS (
    UPDATE kaskad_attempts a
    SET provider_message_id = coalesce(r.provider_message_id, a.provider_message_id),
        billed_units = coalesce(a.billed_units, r.billed_units),
        billed_amount = coalesce(a.billed_amount, r.billed_amount),
        detail = coalesce(r.detail, a.detail), updated_at = $6
    FROM unnest($1::uuid[], $2::text[], $3::int[], $4::numeric[], $5::text[])
        AS r(attempt_id, provider_message_id, billed_units, billed_amount, detail)
    WHERE a.attempt_id = r.attempt_id
)
SELECT e.provider, e.event_key, e.provider_message_id
FROM unnest($7::text[], $2::text[]) AS m(provider, provider_message_id)
JOIN kaskad_delivery_events e
  ON e.provider = m.provider AND e.provider_message_id = m.provider_message_id
WHERE e.attempt_id IS NULL AND e.processed_at IS NULL;

-- name: locked_reachabilities
-- The rows of people whose reachability this transaction is about to update, each person
-- locked first until the transaction ends (kaskad_locked_reachabilities, migration 0007):
-- without the lock two transactions observing one person read the same row, and the second
-- upsert drops the first one's outcome.
SELECT recipient_key, channel, model FROM kaskad_locked_reachabilities($1::text[]);

-- name: get_reachabilities
-- The people's rows: the planner's misses of the Redis hot copy, read together.
SELECT recipient_key, channel, model FROM kaskad_reachability
WHERE recipient_key = ANY($1::text[]);

-- name: get_channel_stats
SELECT channel, model FROM kaskad_channel_stats;

-- name: lock_channel_stats
SELECT channel, model FROM kaskad_channel_stats ORDER BY channel FOR UPDATE;

-- name: upsert_channel_stats
INSERT INTO kaskad_channel_stats (channel, model, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (channel) DO UPDATE SET model = $2, updated_at = $3;

-- name: bill_attempts
-- What attempts were billed, for one round (each attempt once), in ONE statement: a ledger
-- entry for each attempt not booked yet ($1-$4: attempt, units, amount, the price book's
-- amount; an attempt booked already keeps its entry); for delivery reports, what they said
-- was billed on the attempt rows ($5-$7), and where a report named an amount, its word over
-- an amount booked before at the price book's price, which stays beside it ($8-$10). An
-- entry booked by this statement is not seen by its reprice, so nothing is both. Returns
-- the attempts booked now (old_amount NULL) and the old amounts of those repriced.
WITH booked AS (
    INSERT INTO kaskad_ledger (attempt_id, notification_id, client_id, template_id, channel, provider,
        billed_units, amount, price_book_amount, currency, billed_at)
    SELECT a.attempt_id, a.notification_id, n.client_id, n.template_id, a.channel, a.provider,
           b.units, b.amount, b.price_book_amount, a.currency, $11
    FROM unnest($1::uuid[], $2::int[], $3::numeric[], $4::numeric[])
         AS b(attempt_id, units, amount, price_book_amount)
    JOIN kaskad_attempts a ON a.attempt_id = b.attempt_id
    JOIN kaskad_notifications n ON n.notification_id = a.notification_id
    ORDER BY a.attempt_id
    ON CONFLICT (attempt_id) DO NOTHING
    RETURNING attempt_id
), recorded AS (
    UPDATE kaskad_attempts a
    SET billed_units = coalesce(b.units, a.billed_units),
        billed_amount = coalesce(b.amount, a.billed_amount), updated_at = $11
    FROM unnest($5::uuid[], $6::int[], $7::numeric[]) AS b(attempt_id, units, amount)
    WHERE a.attempt_id = b.attempt_id
), repriced AS (
    UPDATE kaskad_ledger l SET amount = b.amount, billed_units = b.units
    FROM unnest($8::uuid[], $9::numeric[], $10::int[]) AS b(attempt_id, amount, units), kaskad_ledger old
    WHERE l.attempt_id = b.attempt_id AND old.entry_id = l.entry_id AND l.amount <> b.amount
    RETURNING l.attempt_id, old.amount
)
SELECT attempt_id, NULL::numeric AS old_amount FROM booked
UNION ALL
SELECT attempt_id, amount FROM repriced;

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
