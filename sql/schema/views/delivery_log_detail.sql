-- Current definition of webhooks.delivery_log_detail, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- The detail of one call: exactly what was sent and what came back.
CREATE OR REPLACE VIEW webhooks.delivery_log_detail AS
SELECT l.*,
       a.request_headers,
       a.request_body,
       a.response_headers,
       a.response_body,
       a.response_truncated,
       a.worker
FROM webhooks.delivery_log l
-- started_at too: it picks the one partition to look in.
JOIN webhooks.attempts a ON a.id = l.attempt_id AND a.started_at = l.called_at;
