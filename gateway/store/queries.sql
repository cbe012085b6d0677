-- Named queries, loaded by gateway/store/queries.py. Each starts with "-- name: NAME".
-- Times are always parameters (the injected clock), never now(), so tests and
-- `kaskad simulate` can move time.

-- name: insert_client
INSERT INTO kaskad_clients (client_id, name, created_at)
VALUES ($1, $2, $3)
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
SELECT c.client_id, c.name
FROM kaskad_api_keys k JOIN kaskad_clients c USING (client_id)
WHERE k.key_hash = $1 AND k.revoked_at IS NULL;

-- name: list_clients
SELECT c.name, c.created_at,
       count(k.key_hash) FILTER (WHERE k.revoked_at IS NULL) AS active_keys
FROM kaskad_clients c LEFT JOIN kaskad_api_keys k USING (client_id)
GROUP BY c.client_id ORDER BY c.name;

-- name: insert_notification
INSERT INTO kaskad_notifications (
    notification_id, client_id, idempotency_key, request_hash, phone, vk_user_id,
    viber_user_id, template_id, template_params, bodies, channels, ack_policy,
    ack_timeout, deadline, max_cost, currency, metadata, state, route, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
        'accepted', $18, $19, $19)
ON CONFLICT (client_id, idempotency_key) DO NOTHING
RETURNING notification_id;

-- name: get_notification_by_key
SELECT notification_id, request_hash, route
FROM kaskad_notifications WHERE client_id = $1 AND idempotency_key = $2;

-- name: insert_work_item
INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at)
VALUES ($1, $2, $3, $4, $5)
RETURNING work_item_id;

-- name: get_notification
SELECT notification_id, client_id, idempotency_key, phone, vk_user_id, viber_user_id,
       template_id, channels, ack_policy, ack_timeout, deadline, max_cost, currency,
       metadata, state, route, created_at, updated_at
FROM kaskad_notifications WHERE notification_id = $1 AND client_id = $2;

-- name: cancel_notification
UPDATE kaskad_notifications SET state = 'cancelled', updated_at = $3
WHERE notification_id = $1 AND client_id = $2 AND state IN ('accepted', 'in_progress')
RETURNING notification_id;

-- name: finish_pending_work
UPDATE kaskad_work_items SET done_at = $2
WHERE notification_id = $1 AND done_at IS NULL;

-- name: claim_due_work
-- Claim due, unleased (or lease-expired) items; each claim bumps the fencing token so a
-- worker whose lease lapsed can no longer complete the item.
WITH due AS (
    SELECT work_item_id FROM kaskad_work_items
    WHERE done_at IS NULL AND due_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY due_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE kaskad_work_items w
SET lease_owner = $3, lease_expires_at = $1 + $4::interval,
    fencing_token = w.fencing_token + 1, attempts = w.attempts + 1
FROM due WHERE w.work_item_id = due.work_item_id
RETURNING w.work_item_id, w.notification_id, w.kind, w.payload, w.due_at, w.fencing_token, w.attempts;

-- name: complete_work
UPDATE kaskad_work_items SET done_at = $3, lease_owner = NULL, lease_expires_at = NULL
WHERE work_item_id = $1 AND fencing_token = $2 AND done_at IS NULL
RETURNING work_item_id;

-- name: release_work
-- Give an item back (after a crash-free failure) to run again at $3.
UPDATE kaskad_work_items SET due_at = $3, lease_owner = NULL, lease_expires_at = NULL
WHERE work_item_id = $1 AND fencing_token = $2 AND done_at IS NULL
RETURNING work_item_id;

-- name: work_backlog
SELECT count(*) AS due, min(due_at) AS oldest_due
FROM kaskad_work_items WHERE done_at IS NULL AND due_at <= $1;
