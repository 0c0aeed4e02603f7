-- Sends again everything that finally failed for an endpoint since a time.
-- Used by `clinic-webhooks redeliver --endpoint ID --since TIME`; from psql:
--   SELECT webhooks.recover(7, now() - interval '1 day');
SELECT webhooks.recover($1, $2::timestamptz)
