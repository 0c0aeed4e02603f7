-- Records a batch of finished calls in one statement:
-- * appends each to webhooks.attempts (the log),
-- * moves each delivery on: succeeded, failed, or pending again at its next
--   attempt time. Fenced by the attempt number: a late result from a worker
--   that lost its lease is logged, but changes nothing;
-- * keeps endpoint health: a success clears the failure streak; a 410 Gone, or
--   failing continuously for $18 seconds, disables the endpoint (its pending
--   deliveries are kept and resume when it is re-enabled).
-- $1 .. $16 are parallel arrays, one element per call (src/recorder.rs,
-- `Columns`); $17 is the worker, $18 health.disable_after in seconds.
WITH r AS (
    SELECT *
      FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::float8[], $5::float8[],
                  $6::text[], $7::text[], $8::text[], $9::int2[], $10::text[],
                  $11::text[], $12::bool[], $13::text[], $14::text[], $15::text[],
                  $16::float8[])
        AS r (delivery_id, endpoint_id, attempt, started_at, duration_ms,
              url, request_headers, request_body, response_status, response_headers,
              response_body, response_truncated, outcome, error_kind, error,
              retry_in_s)
),
moved AS (
    UPDATE webhooks.deliveries d
       SET state = CASE r.outcome
                       WHEN 'succeeded' THEN 'succeeded'
                       WHEN 'failed' THEN 'failed'
                       ELSE 'pending'
                   END::webhooks.delivery_state,
           next_attempt_at = CASE WHEN r.outcome = 'retrying'
                                  THEN now() + make_interval(secs => r.retry_in_s)
                                  ELSE d.next_attempt_at END,
           lease_expires_at = NULL,
           leased_by = NULL,
           last_status = r.response_status,
           last_error = r.error,
           finished_at = CASE WHEN r.outcome IN ('succeeded', 'failed') THEN now() END
      FROM r
     WHERE d.id = r.delivery_id
       AND d.attempts = r.attempt
       AND d.state = 'delivering'
),
health AS (
    SELECT h.endpoint_id, h.any_success, h.gone,
           h.gone OR coalesce(e.failing_since < now() - make_interval(secs => $18), false)
               AS disable
      FROM (SELECT r.endpoint_id,
                   bool_or(r.outcome = 'succeeded') AS any_success,
                   coalesce(bool_or(r.response_status = 410), false) AS gone
              FROM r
             GROUP BY r.endpoint_id) h
      JOIN webhooks.endpoints e ON e.id = h.endpoint_id
),
recovered AS (
    UPDATE webhooks.endpoints e
       SET failing_since = NULL
      FROM health h
     WHERE e.id = h.endpoint_id
       AND h.any_success
       AND NOT h.gone
       AND e.failing_since IS NOT NULL
),
failing AS (
    UPDATE webhooks.endpoints e
       SET failing_since = coalesce(e.failing_since, now()),
           enabled = NOT h.disable,
           disabled_at = CASE WHEN h.disable THEN now() END,
           disabled_reason = CASE
               WHEN h.gone THEN 'the endpoint answered 410 Gone'
               WHEN h.disable THEN 'every delivery failed since ' || e.failing_since::text
           END
      FROM health h
     WHERE e.id = h.endpoint_id
       AND e.enabled
       AND (h.gone OR (NOT h.any_success AND (e.failing_since IS NULL OR h.disable)))
)
INSERT INTO webhooks.attempts (
    delivery_id, endpoint_id, attempt, started_at, duration_ms, url,
    request_headers, request_body, response_status, response_headers, response_body,
    response_truncated, outcome, error_kind, error, next_attempt_at, worker)
SELECT r.delivery_id, r.endpoint_id, r.attempt, to_timestamp(r.started_at), r.duration_ms, r.url,
       r.request_headers::jsonb, r.request_body, r.response_status, r.response_headers::jsonb,
       r.response_body, r.response_truncated, r.outcome::webhooks.attempt_outcome,
       r.error_kind, r.error,
       CASE WHEN r.outcome = 'retrying' THEN now() + make_interval(secs => r.retry_in_s) END,
       $17
  FROM r
