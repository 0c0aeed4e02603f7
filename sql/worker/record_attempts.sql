-- Records a batch of finished calls in one statement:
-- * moves each delivery on: succeeded, failed, or pending again at its next
--   attempt time. Fenced by the attempt number and the state: only the
--   lease the call was made under moves its delivery;
-- * appends each call to webhooks.attempts (the log). A late result (its
--   delivery was taken back meanwhile, from a worker stalled past its lease
--   or taken for dead) is logged with outcome 'late' in place of its
--   attempt's 'abandoned' row, or as a row of its own when there is none,
--   and changes nothing else: one row per HTTP call, with what the
--   receiver answered;
-- * keeps endpoint health: a success clears the failure streak; a 410 Gone, or
--   failing continuously for $18 seconds, disables the endpoint (its pending
--   deliveries are kept and resume when it is re-enabled).
-- $1 .. $16 are parallel arrays, one element per call (src/recorder.rs,
-- `Columns`); $17 is the worker, $18 health.disable_after in seconds.
-- Returns the (delivery, attempt) of each late result. Writing a batch again
-- after it was recorded changes nothing and returns nothing.
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
    RETURNING d.id, d.attempts
),
-- Whether each result is the current attempt's (its delivery moved), late,
-- or already recorded: a batch written again because the database went away
-- before its commit was acknowledged, although the commit took place. Only a
-- result that did not move its delivery is looked up.
fate AS (
    SELECT r.*, m.id IS NOT NULL AS current
      FROM r
      LEFT JOIN moved m ON m.id = r.delivery_id AND m.attempts = r.attempt
     WHERE m.id IS NOT NULL
        OR NOT EXISTS (SELECT 1 FROM webhooks.attempts a
                        WHERE a.delivery_id = r.delivery_id
                          AND a.attempt = r.attempt
                          AND a.worker = $17
                          AND a.outcome <> 'abandoned')
),
health AS (
    SELECT h.endpoint_id, h.any_success, h.gone,
           h.gone OR coalesce(e.failing_since < now() - make_interval(secs => $18), false)
               AS disable
      FROM (SELECT f.endpoint_id,
                   bool_or(f.outcome = 'succeeded') AS any_success,
                   coalesce(bool_or(f.response_status = 410), false) AS gone
              FROM fate f
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
-- Late: over the 'abandoned' row that lease recovery wrote for the attempt.
replaced AS (
    UPDATE webhooks.attempts a
       SET started_at = to_timestamp(f.started_at),
           duration_ms = f.duration_ms,
           url = f.url,
           request_headers = f.request_headers::jsonb,
           request_body = f.request_body,
           response_status = f.response_status,
           response_headers = f.response_headers::jsonb,
           response_body = f.response_body,
           response_truncated = f.response_truncated,
           outcome = 'late',
           error_kind = f.error_kind,
           error = concat_ws('; ', f.error,
                             'the result came after the delivery was taken back (' || a.error || ')'),
           next_attempt_at = NULL,
           worker = $17
      FROM fate f
     WHERE NOT f.current
       AND a.delivery_id = f.delivery_id
       AND a.attempt = f.attempt
       AND a.outcome = 'abandoned'
    RETURNING a.delivery_id, a.attempt
),
logged AS (
    INSERT INTO webhooks.attempts (
        delivery_id, endpoint_id, attempt, started_at, duration_ms, url,
        request_headers, request_body, response_status, response_headers, response_body,
        response_truncated, outcome, error_kind, error, next_attempt_at, worker)
    SELECT f.delivery_id, f.endpoint_id, f.attempt, to_timestamp(f.started_at), f.duration_ms,
           f.url, f.request_headers::jsonb, f.request_body, f.response_status,
           f.response_headers::jsonb, f.response_body, f.response_truncated,
           CASE WHEN f.current THEN f.outcome ELSE 'late' END::webhooks.attempt_outcome,
           f.error_kind,
           CASE WHEN f.current THEN f.error
                ELSE concat_ws('; ', f.error, 'the result came after the delivery had moved on')
           END,
           CASE WHEN f.current AND f.outcome = 'retrying'
                THEN now() + make_interval(secs => f.retry_in_s) END,
           $17
      FROM fate f
     WHERE f.current
        OR NOT EXISTS (SELECT 1 FROM replaced x
                        WHERE x.delivery_id = f.delivery_id AND x.attempt = f.attempt)
)
SELECT f.delivery_id AS "delivery_id!", f.attempt AS "attempt!"
  FROM fate f
 WHERE NOT f.current
