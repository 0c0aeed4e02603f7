-- Success rate and latency per endpoint over the last hour and day.
--   psql -v clinic_id=1 -f sql/health/endpoint_health.sql
SELECT * FROM webhooks.endpoint_health WHERE clinic_id = :clinic_id ORDER BY endpoint_id;
