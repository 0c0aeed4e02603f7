-- The admin panel's log list: one clinic's calls, newest first, a page at a
-- time (keyset pagination: the last page is as fast as the first).
--   psql -v clinic_id=1 -v limit=50 -f sql/log/calls_by_clinic.sql
-- Next page: add -v before_at="'<called_at of the last row>'" -v before_id=<its attempt_id>.
-- Each of the clinic's endpoints is read newest first on
-- webhooks.attempts_by_endpoint_time, in the partitions up to before_at only,
-- and their pages merged. The log alone answers: each call carries its
-- event.
\if :{?before_at} \else \set before_at '''infinity''' \endif
\if :{?before_id} \else \set before_id 9223372036854775807 \endif
SELECT a.id AS attempt_id,
       a.started_at AS called_at,
       a.endpoint_id,
       a.url,
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
  FROM (SELECT page.*
          FROM webhooks.endpoints e
         CROSS JOIN LATERAL (
                SELECT x.*
                  FROM webhooks.attempts x
                 WHERE x.endpoint_id = e.id
                   AND x.started_at <= :before_at::timestamptz
                   AND (x.started_at < :before_at::timestamptz OR x.id < :before_id)
                 ORDER BY x.started_at DESC, x.id DESC
                 LIMIT :limit) page
         WHERE e.clinic_id = :clinic_id
         ORDER BY page.started_at DESC, page.id DESC
         LIMIT :limit) a
 ORDER BY a.started_at DESC, a.id DESC;
