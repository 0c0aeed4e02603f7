-- Sends again everything that finally failed for an endpoint since a time.
-- Used by `clinic-webhooks redeliver --endpoint ID --since TIME`; from psql:
--   SELECT webhooks.recover(7, now() - interval '1 day');
-- $2 is text, parsed by PostgreSQL: any timestamptz input ('yesterday' too).
SELECT webhooks.recover($1, $2::text::timestamptz) AS "recovered!"
