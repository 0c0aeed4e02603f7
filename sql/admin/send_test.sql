-- Sends endpoint $1 an example event of type $2 (NULL: its first
-- subscribed type), marked as a test: webhooks.send_test. Returns the event
-- id. Used by `clinic-webhooks send-test`; from psql:
--   SELECT webhooks.send_test(7, 'visit.created');
SELECT webhooks.send_test($1, $2) AS "event_id!"
