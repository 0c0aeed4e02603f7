-- The log of one endpoint, newest first, a page at a time (keyset).
--   psql -v endpoint_id=7 -v limit=50 -f sql/log/calls_by_endpoint.sql
-- Next page: add -v before_at="'<called_at of the last row>'" -v before_id=<its attempt_id>.
-- Served by webhooks.attempts_by_endpoint_time, in the partitions up to
-- before_at only.
\if :{?before_at} \else \set before_at '''infinity''' \endif
\if :{?before_id} \else \set before_id 9223372036854775807 \endif
SELECT a.id AS attempt_id,
       a.started_at AS called_at,
       a.endpoint_id,
       a.event_id,
       a.event_type,
       a.attempt,
       a.response_status,
       round(a.duration_ms::numeric, 1) AS duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       a.test
  FROM webhooks.attempts a
 WHERE a.endpoint_id = :endpoint_id
   AND a.started_at <= :before_at::timestamptz
   AND (a.started_at < :before_at::timestamptz OR a.id < :before_id)
 ORDER BY a.started_at DESC, a.id DESC
 LIMIT :limit;
