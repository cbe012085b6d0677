-- The W3C trace context of the call that accepted a notification: every later span of its
-- cascade (provider calls, the callback that closed it) joins that one trace.
ALTER TABLE kaskad_notifications ADD COLUMN traceparent text;
