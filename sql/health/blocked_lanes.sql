-- Ordered lanes held up by a delivery being retried, and by what.
--   psql -f sql/health/blocked_lanes.sql
SELECT * FROM webhooks.blocked_lanes ORDER BY oldest_waiting_since;
