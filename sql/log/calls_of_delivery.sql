-- Every call of one delivery, in order.
--   psql -v delivery_id=42 -f sql/log/calls_of_delivery.sql
-- Served by webhooks.attempts_by_delivery.
SELECT a.id AS attempt_id,
       a.started_at AS called_at,
       a.attempt,
       a.response_status,
       round(a.duration_ms::numeric, 1) AS duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       a.worker,
       a.test
  FROM webhooks.attempts a
 WHERE a.delivery_id = :delivery_id
 ORDER BY a.attempt, a.id;
