-- Per endpoint: what waits (pending), what is due now, what is in flight,
-- what finally failed (within retention), how long the oldest due delivery
-- has been due, since when the endpoint fails, why it is disabled, and how
-- many of its lanes wait behind a retried or in-flight delivery. Used by
-- `clinic-webhooks status [--json]`; a DBA can run it as is:
--   psql -f sql/admin/status.sql
-- The queue counts read webhooks.deliveries_live (the queue) only.
-- (The "name!" aliases tell the compile-time check, sqlx, that a column is
-- never NULL.)
SELECT e.id AS "endpoint_id!",
       e.clinic_id AS "clinic_id!",
       e.url AS "url!",
       e.version AS "version!",
       e.enabled AS "enabled!",
       coalesce(q.pending, 0) AS "pending!",
       coalesce(q.due, 0) AS "due!",
       coalesce(q.in_flight, 0) AS "in_flight!",
       (SELECT count(*) FROM webhooks.deliveries f
         WHERE f.endpoint_id = e.id AND f.state = 'failed') AS "failed!",
       round(extract(epoch FROM now() - q.oldest_due_at))::bigint AS oldest_due_s,
       to_char(e.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS failing_since,
       e.disabled_reason,
       (SELECT count(*) FROM webhooks.blocked_lanes b WHERE b.endpoint_id = e.id) AS "blocked_lanes!"
  FROM webhooks.endpoints e
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE d.state = 'pending') AS pending,
               count(*) FILTER (WHERE d.state = 'pending' AND d.next_attempt_at <= now()) AS due,
               count(*) FILTER (WHERE d.state = 'delivering') AS in_flight,
               min(d.next_attempt_at) FILTER (WHERE d.state = 'pending' AND d.next_attempt_at <= now())
                   AS oldest_due_at
          FROM webhooks.deliveries_live d
         WHERE d.endpoint_id = e.id) q ON true
 ORDER BY e.id
