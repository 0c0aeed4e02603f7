-- Records a batch of finished calls in one statement:
-- * moves each delivery on: succeeded, failed, or pending again at its next
--   attempt time. Fenced by the attempt number and the state: only the
--   lease the call was made under moves its delivery;
-- * appends each call whose delivery it moved to webhooks.attempts (the log);
-- * keeps endpoint health: a success clears the failure streak; a 410 Gone, or
--   failing continuously for $20 seconds, disables the endpoint (its pending
--   deliveries are kept and resume when it is re-enabled).
-- Returns the (delivery, attempt) of each result that moved nothing: a late
-- result (its delivery was taken back meanwhile, from a worker stalled past
-- its lease or taken for dead), or one recorded already (a batch written
-- again after the database went away before acknowledging its commit).
-- The recorder hands those to sql/worker/record_late_attempts.sql, so that
-- this statement, run for every batch, never reads the log.
-- $1 .. $18 are parallel arrays, one element per call (src/recorder.rs,
-- `Columns`); $19 is the worker, $20 health.disable_after in seconds.
WITH r AS (
    SELECT *
      FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::float8[], $5::float8[],
                  $6::text[], $7::text[], $8::text[], $9::int2[], $10::text[],
                  $11::text[], $12::bool[], $13::text[], $14::text[], $15::text[],
                  $16::float8[], $17::uuid[], $18::text[])
        AS r (delivery_id, endpoint_id, attempt, started_at, duration_ms,
              url, request_headers, request_body, response_status, response_headers,
              response_body, response_truncated, outcome, error_kind, error,
              retry_in_s, event_id, event_type)
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
    RETURNING d.id, d.attempts, d.test
),
-- Whether each result is the current attempt's (its delivery moved).
fate AS (
    SELECT r.*, m.id IS NOT NULL AS current, coalesce(m.test, false) AS test
      FROM r
      LEFT JOIN moved m ON m.id = r.delivery_id AND m.attempts = r.attempt
),
health AS (
    SELECT h.endpoint_id, h.any_success, h.gone,
           h.gone OR coalesce(e.failing_since < now() - make_interval(secs => $20), false)
               AS disable
      FROM (SELECT f.endpoint_id,
                   bool_or(f.outcome = 'succeeded') AS any_success,
                   coalesce(bool_or(f.response_status = 410), false) AS gone
              FROM fate f
             WHERE f.current
             GROUP BY f.endpoint_id) h
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
),
logged AS (
    INSERT INTO webhooks.attempts (
        delivery_id, endpoint_id, event_id, event_type, attempt, started_at, duration_ms, url,
        request_headers, request_body, response_status, response_headers, response_body,
        response_truncated, outcome, error_kind, error, next_attempt_at, worker, test)
    SELECT f.delivery_id, f.endpoint_id, f.event_id, f.event_type, f.attempt, to_timestamp(f.started_at), f.duration_ms,
           f.url, f.request_headers::jsonb, f.request_body, f.response_status,
           f.response_headers::jsonb, f.response_body, f.response_truncated,
           f.outcome::webhooks.attempt_outcome, f.error_kind, f.error,
           CASE WHEN f.outcome = 'retrying' THEN now() + make_interval(secs => f.retry_in_s) END,
           $19, f.test
      FROM fate f
     WHERE f.current
)
SELECT f.delivery_id AS "delivery_id!", f.attempt AS "attempt!"
  FROM fate f
 WHERE NOT f.current
