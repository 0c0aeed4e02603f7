-- Current definition of webhooks.endpoint_health, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Per endpoint, calls, success rate and latency (p50, p95) over the last
-- hour and the last day, in one pass over the last day's calls. Computed in
-- the view itself, not in a function it calls: a function called from a view
-- runs with the caller's rights, and the read-only role cannot read
-- webhooks.attempts. Lost-lease attempts are not calls.
CREATE OR REPLACE VIEW webhooks.endpoint_health AS
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
