-- The whole story of one event: every delivery to every endpoint, each
-- attempt, why it failed, and when the next one is due.
--   psql -v event_id="'5c34979c-30dc-496c-8cd3-6eb9925862c1'" -f sql/log/delivery_history.sql
SELECT delivery_id,
       endpoint_id,
       url,
       attempt,
       called_at,
       response_status,
       outcome,
       error_kind,
       error,
       next_attempt_at,
       delivery_state
  FROM webhooks.delivery_log
 WHERE event_id = :event_id::uuid
 ORDER BY delivery_id, attempt, attempt_id;
