-- Every call made for one event (the webhook-id), to every endpoint, in order.
--   psql -v event_id="'5c34979c-30dc-496c-8cd3-6eb9925862c1'" -f sql/log/calls_of_event.sql
-- Served by webhooks.deliveries_by_event, then webhooks.attempts_by_delivery.
SELECT a.id AS attempt_id,
       a.started_at AS called_at,
       d.id AS delivery_id,
       a.endpoint_id,
       a.attempt,
       a.response_status,
       round(a.duration_ms::numeric, 1) AS duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       d.state AS delivery_state
  FROM webhooks.deliveries d
  JOIN webhooks.attempts a ON a.delivery_id = d.id
 WHERE d.event_id = :event_id::uuid
 ORDER BY d.id, a.attempt, a.id;
