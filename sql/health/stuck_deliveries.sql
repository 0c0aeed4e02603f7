-- Deliveries stuck past their lease (their worker died or stalled).
--   psql -f sql/health/stuck_deliveries.sql
SELECT * FROM webhooks.stuck_deliveries ORDER BY overdue DESC;
