-- The whole story of one event: every delivery to every endpoint (also one
-- not tried yet), each attempt, why it failed, and when the next one is due.
--   psql -v event_id="'5c34979c-30dc-496c-8cd3-6eb9925862c1'" -f sql/log/delivery_history.sql
-- Served by webhooks.deliveries_by_event (the queue and the event's day of
-- the history only), then webhooks.attempts_by_delivery.
SELECT d.id AS delivery_id,
       d.endpoint_id,
       a.url,
       a.attempt,
       a.started_at AS called_at,
       a.response_status,
       a.outcome,
       a.error_kind,
       a.error,
       coalesce(a.next_attempt_at, CASE WHEN d.state = 'pending' THEN d.next_attempt_at END)
           AS next_attempt_at,
       d.state AS delivery_state
  FROM webhooks.deliveries d
  LEFT JOIN webhooks.attempts a ON a.delivery_id = d.id
 WHERE d.event_id = :event_id::uuid
 ORDER BY d.id, a.attempt, a.id;
