-- The engine's read of the people whose reachability a transaction is about to update, after
-- locking them, in one call (it was two statements: lock_recipients, then the read). A
-- transaction-scoped advisory lock per person (class 7001, the key's hash; the two-int4 lock
-- space, apart from the migration lock) also covers people without a row yet, which a row
-- lock cannot; taken in key order, one order for every transaction. The read must see what
-- the lock waited for: a statement's snapshot is taken before it waits, but each statement
-- of a VOLATILE function takes its own, so the read after the PERFORM sees every outcome
-- committed by the transactions it waited for.
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

-- A finished cascade's pending items are found through their notification: an index of
-- pending items only (it was every item's), so the planner no longer ANDs the notification
-- index with the whole partial index of due items, a cost that grew with the backlog.
-- Nothing deletes notifications, so the foreign key needs no index of its own.
DROP INDEX IF EXISTS kaskad_work_items_notification;
CREATE INDEX IF NOT EXISTS kaskad_work_items_pending ON kaskad_work_items (notification_id)
    WHERE done_at IS NULL;
