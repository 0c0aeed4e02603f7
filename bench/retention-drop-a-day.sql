-- One retention run that drops a day of ~330,000 logged calls, timed.
-- On a scratch database with every migration applied:
--   createdb cw_ret && for m in migrations/*.sql; do
--     psql -X -q -d cw_ret -v ON_ERROR_STOP=1 --single-transaction -f "$m"; done
--   psql -X -q -d cw_ret -f bench/retention-drop-a-day.sql
-- It fills the partition of the day after tomorrow with log rows of
-- realistic size (~1 KB each with their indexes), then runs maintenance as if
-- 33 days had passed (30 kept), and prints the run's time and the dead rows
-- it left. Results: BENCHMARKS.md, "The partitioned log".
\set ON_ERROR_STOP 1
INSERT INTO clinic.clinics (id, code, name) VALUES (1, 'c1', 'c1');
-- ~330,000 calls on one day, with log rows of realistic size.
INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_type, attempt, started_at, duration_ms, url,
        request_headers, request_body, response_status, response_headers, response_body, outcome, worker)
SELECT g, 1 + g % 50, 'visit.updated', 1, date_trunc('day', now()) + interval '2 days' + make_interval(secs => g * 0.26), 12.5,
       'https://hooks.example.com/clinic/webhooks',
       jsonb_build_object('content-type', 'application/json', 'user-agent', 'clinic-webhooks/0.1.0',
                          'webhook-id', gen_random_uuid()::text, 'webhook-timestamp', '1796322737',
                          'webhook-signature', 'v1,' || encode(sha256(g::text::bytea), 'base64'), 'accept', '*/*'),
       '{"version":"2.0","id":"' || gen_random_uuid() || '","type":"visit.updated","created":1796322737,"clinic_code":"c1","data":{"id":"' || g || '","member_id":"60610","provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,"actual_end":null,"status":"inprogress","status_updated_by":"60610"}}',
       200, '{"content-type": "application/json", "date": "Thu, 03 Dec 2026 19:00:00 GMT", "content-length": "16", "server": "nginx"}',
       '{"received":true}', 'succeeded', 'vm-1-abcd'
  FROM generate_series(1, 330000) g;
ANALYZE webhooks.attempts;
SELECT name, rows_estimate, pg_size_pretty(bytes) FROM webhooks.history_partitions WHERE history = 'attempts' AND rows_estimate > 0;
\timing on
SELECT webhooks.run_maintenance('30 days', p_now => now() + interval '33 days') ->> 'dropped_rows_estimate' AS dropped_rows;
\timing off
SELECT sum(n_dead_tup) AS dead_tuples_left FROM pg_stat_user_tables WHERE schemaname = 'webhooks' AND relname LIKE 'attempts%';
