-- The admin panel's log list: a clinic's most recent webhook calls.
--   psql -v clinic_id=1 -v limit=50 -f sql/log/recent_calls.sql
SELECT attempt_id,
       called_at,
       endpoint_id,
       url,
       event_id,
       event_type,
       attempt,
       response_status,
       round(duration_ms::numeric, 1) AS duration_ms,
       outcome,
       error_kind,
       error,
       next_attempt_at
  FROM webhooks.delivery_log
 -- By endpoint, so that webhooks.attempts_by_endpoint_time serves it.
 WHERE endpoint_id IN (SELECT id FROM webhooks.endpoints WHERE clinic_id = :clinic_id)
 ORDER BY called_at DESC, attempt_id DESC
 LIMIT :limit;
