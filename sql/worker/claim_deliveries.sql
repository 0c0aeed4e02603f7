-- Claims up to $1 due deliveries for worker $2, leasing them for $3 seconds.
-- $4 and $5 are the worker's calls that are over but not yet logged, as
-- parallel arrays of delivery id and attempt: they no longer count against
-- their endpoints' bulkheads. One transaction per call. The claim itself
-- (fairness, bulkheads, lanes, first attempts before retries) is
-- webhooks.claim_deliveries: sql/schema/functions/claim_deliveries.sql.
-- The "name!" aliases tell the compile-time check (sqlx) that a column of
-- the function's result is never NULL.
SELECT delivery_id AS "delivery_id!", attempt AS "attempt!",
       schedule_position AS "schedule_position!", event_id AS "event_id!",
       event_type AS "event_type!", created AS "created!", clinic_code,
       snapshot AS "snapshot!", endpoint_id AS "endpoint_id!", url AS "url!",
       version AS "version!", secret AS "secret!"
  FROM webhooks.claim_deliveries($1, $2, $3, $4, $5)
