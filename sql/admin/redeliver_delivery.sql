-- Sends one delivery again now, with a fresh retry schedule (same webhook-id).
-- Used by `clinic-webhooks redeliver --delivery ID`; from psql:
--   SELECT webhooks.redeliver(42);
SELECT webhooks.redeliver($1)
