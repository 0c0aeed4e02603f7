-- Records the results that sql/worker/record_attempts.sql found had moved
-- nothing (it returned them), in one statement:
-- * a result this worker recorded already (its batch was written again after
--   the database went away before acknowledging the commit) changes nothing;
-- * a late result (its delivery was taken back meanwhile, from a worker
--   stalled past its lease or taken for dead) is logged with outcome 'late'
--   in place of its attempt's 'abandoned' row, or as a row of its own when
--   there is none, and changes nothing else: one row per HTTP call, with
--   what the receiver answered.
-- Same parameters as record_attempts.sql, $1 .. $18 and $19 (the worker).
-- Returns the (delivery, attempt) of each late result.
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
late AS (
    SELECT r.*
      FROM r
     WHERE NOT EXISTS (SELECT 1 FROM webhooks.attempts a
                        WHERE a.delivery_id = r.delivery_id
                          AND a.attempt = r.attempt
                          AND a.worker = $19
                          AND a.outcome <> 'abandoned')
),
-- Over the 'abandoned' row that lease recovery wrote for the attempt.
replaced AS (
    UPDATE webhooks.attempts a
       SET started_at = to_timestamp(l.started_at),
           duration_ms = l.duration_ms,
           url = l.url,
           request_headers = l.request_headers::jsonb,
           request_body = l.request_body,
           response_status = l.response_status,
           response_headers = l.response_headers::jsonb,
           response_body = l.response_body,
           response_truncated = l.response_truncated,
           outcome = 'late',
           error_kind = l.error_kind,
           error = concat_ws('; ', l.error,
                             'the result came after the delivery was taken back (' || a.error || ')'),
           next_attempt_at = NULL,
           worker = $19
      FROM late l
     WHERE a.delivery_id = l.delivery_id
       AND a.attempt = l.attempt
       AND a.outcome = 'abandoned'
    RETURNING a.delivery_id, a.attempt
),
logged AS (
    INSERT INTO webhooks.attempts (
        delivery_id, endpoint_id, event_id, event_type, attempt, started_at, duration_ms, url,
        request_headers, request_body, response_status, response_headers, response_body,
        response_truncated, outcome, error_kind, error, next_attempt_at, worker, test)
    SELECT l.delivery_id, l.endpoint_id, l.event_id, l.event_type, l.attempt, to_timestamp(l.started_at), l.duration_ms,
           l.url, l.request_headers::jsonb, l.request_body, l.response_status,
           l.response_headers::jsonb, l.response_body, l.response_truncated,
           'late', l.error_kind,
           concat_ws('; ', l.error, 'the result came after the delivery had moved on'),
           NULL, $19,
           coalesce((SELECT d.test FROM webhooks.deliveries d WHERE d.id = l.delivery_id), false)
      FROM late l
     WHERE NOT EXISTS (SELECT 1 FROM replaced x
                        WHERE x.delivery_id = l.delivery_id AND x.attempt = l.attempt)
)
SELECT l.delivery_id AS "delivery_id!", l.attempt AS "attempt!"
  FROM late l
