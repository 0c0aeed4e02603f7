-- Claims up to $1 due deliveries for worker $2, leasing them for $3 seconds
-- (see webhooks.claim_deliveries in migrations/*_webhooks_claim_function.sql:
-- fair across endpoints, bulkheads exact across processes, lane heads only,
-- first attempts before retries). $4 and $5 are the worker's finished calls
-- not yet logged, as parallel arrays of delivery id and attempt: they leave
-- their endpoints' bulkheads (migrations/*_claim_counts_only_calls_in_flight.sql).
-- One transaction per call.
SELECT delivery_id, attempt, schedule_position, event_id, event_type, created,
       clinic_code, snapshot, endpoint_id, url, version, secret
  FROM webhooks.claim_deliveries($1, $2, $3, $4, $5)
