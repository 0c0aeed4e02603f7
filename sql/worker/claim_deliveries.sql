-- Claims up to $1 due deliveries for worker $2, leasing them for $3 seconds.
-- $4 and $5 are the worker's calls that are over but not yet logged, as
-- parallel arrays of delivery id and attempt: they no longer count against
-- their endpoints' bulkheads. One transaction per call. The claim itself
-- (fairness, bulkheads, lanes, first attempts before retries) is
-- webhooks.claim_deliveries: sql/schema/functions/claim_deliveries.sql.
SELECT delivery_id, attempt, schedule_position, event_id, event_type, created,
       clinic_code, snapshot, endpoint_id, url, version, secret
  FROM webhooks.claim_deliveries($1, $2, $3, $4, $5)
