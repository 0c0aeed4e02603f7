-- Sends an event again: to all its endpoints ($2 NULL), or to one endpoint of
-- the event's clinic, rendered in that endpoint's version (replay to an
-- endpoint added later). Returns the delivery ids that were queued.
-- Used by `clinic-webhooks redeliver --event UUID [--endpoint ID]`; from psql:
--   SELECT * FROM webhooks.redeliver_event('5c34979c-30dc-496c-8cd3-6eb9925862c1', 7);
SELECT d AS "delivery_id!" FROM webhooks.redeliver_event($1, $2) AS d
