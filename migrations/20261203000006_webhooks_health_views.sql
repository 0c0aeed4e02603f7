-- Health views for DBAs and the admin panel. The named queries over them are
-- in sql/health; the README shows what each answers.

-- Per endpoint: what waits, what is in flight, how old the oldest pending
-- delivery is, and when the next one is due.
CREATE VIEW webhooks.queue_overview AS
SELECT e.id                                                        AS endpoint_id,
       e.clinic_id,
       e.version,
       e.enabled,
       e.disabled_reason,
       count(d.id) FILTER (WHERE d.state = 'pending')              AS pending,
       count(d.id) FILTER (WHERE d.state = 'pending' AND d.next_attempt_at <= now())
                                                                   AS due_now,
       count(d.id) FILTER (WHERE d.state = 'delivering')           AS delivering,
       count(d.id) FILTER (WHERE d.state = 'failed')               AS failed,
       now() - min(d.created_at) FILTER (WHERE d.state = 'pending') AS oldest_pending_age,
       min(d.next_attempt_at) FILTER (WHERE d.state = 'pending')   AS next_due_at
  FROM webhooks.endpoints e
  LEFT JOIN webhooks.deliveries d
    ON d.endpoint_id = e.id AND d.state IN ('pending', 'delivering', 'failed')
 GROUP BY e.id;

-- Deliveries whose lease has expired: the worker that claimed them stopped
-- reporting. A running worker takes them back within a quarter of a lease.
CREATE VIEW webhooks.stuck_deliveries AS
SELECT d.id                          AS delivery_id,
       d.endpoint_id,
       d.event_id,
       d.attempts,
       d.leased_by,
       d.lease_expires_at,
       now() - d.lease_expires_at    AS overdue
  FROM webhooks.deliveries d
 WHERE d.state = 'delivering'
   AND d.lease_expires_at < now();

-- Ordered lanes with later events waiting behind an unfinished head: which
-- delivery blocks them, its state, attempts, last error and next attempt.
CREATE VIEW webhooks.blocked_lanes AS
SELECT head.endpoint_id,
       head.subject,
       head.id                AS blocked_by_delivery,
       head.event_id          AS blocked_by_event,
       head.state             AS head_state,
       head.attempts          AS head_attempts,
       head.last_status       AS head_last_status,
       head.last_error        AS head_last_error,
       head.next_attempt_at   AS head_next_attempt_at,
       waiting.n              AS waiting,
       waiting.oldest         AS oldest_waiting_since
  FROM (SELECT DISTINCT ON (d.endpoint_id, d.subject) d.*
          FROM webhooks.deliveries d
         WHERE d.state IN ('pending', 'delivering')
         ORDER BY d.endpoint_id, d.subject, d.id) head
  JOIN webhooks.endpoints e ON e.id = head.endpoint_id AND e.ordered
 CROSS JOIN LATERAL (
        SELECT count(*) AS n, min(w.created_at) AS oldest
          FROM webhooks.deliveries w
         WHERE w.endpoint_id = head.endpoint_id
           AND w.subject = head.subject
           AND w.id > head.id
           AND w.state = 'pending') waiting
 WHERE waiting.n > 0
   AND (head.state = 'delivering' OR head.attempts > head.retry_base);

-- Per endpoint, calls, success rate and latency (p50, p95) over the last
-- hour and the last day, in one pass over the last day's calls. Computed in
-- the view itself, not in a function it calls: a function called from a view
-- runs with the caller's rights, and the read-only role cannot read
-- webhooks.attempts. Lost-lease attempts are not calls.
CREATE VIEW webhooks.endpoint_health AS
SELECT e.id AS endpoint_id,
       e.clinic_id,
       e.url,
       e.enabled,
       e.failing_since,
       e.disabled_reason,
       s.calls_1h,
       s.success_rate_1h,
       s.p50_ms_1h,
       s.p95_ms_1h,
       s.calls_24h,
       s.success_rate_24h,
       s.p50_ms_24h,
       s.p95_ms_24h
  FROM webhooks.endpoints e
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE a.last_hour)                       AS calls_1h,
               round(avg((a.outcome = 'succeeded')::int) FILTER (WHERE a.last_hour), 4)
                                                                         AS success_rate_1h,
               round((percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms)
                          FILTER (WHERE a.last_hour))::numeric, 1)       AS p50_ms_1h,
               round((percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms)
                          FILTER (WHERE a.last_hour))::numeric, 1)       AS p95_ms_1h,
               count(*)                                                  AS calls_24h,
               round(avg((a.outcome = 'succeeded')::int), 4)             AS success_rate_24h,
               round(percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1)
                                                                         AS p50_ms_24h,
               round(percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1)
                                                                         AS p95_ms_24h
          FROM (SELECT at.outcome, at.duration_ms,
                       at.started_at > now() - interval '1 hour' AS last_hour
                  FROM webhooks.attempts at
                 WHERE at.endpoint_id = e.id
                   AND at.started_at > now() - interval '1 day'
                   AND at.outcome <> 'abandoned') a
       ) s;
