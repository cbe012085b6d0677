-- Items that move a cascade already under way (submits, timers, delivery reports) are
-- claimed before new cascades' start items (claim_due_work): under a backlog, what has
-- started finishes first, and new work waits at the door (where admission can refuse it).
CREATE INDEX kaskad_work_items_due_started ON kaskad_work_items (due_at)
    WHERE done_at IS NULL AND kind <> 'start';
