-- The admin panel's detail of one call: exactly what was sent (headers and
-- body) and what came back (status, headers, body truncated at
-- http.max_response_body), and the error text.
--   psql -x -v attempt_id=123 -v called_at="'<its called_at>'" -f sql/log/call_detail.sql
-- Keyed like the lists' rows, by attempt_id and called_at: the time picks
-- the one partition to read. (With only an id: webhooks.delivery_log_detail.)
-- The delivery's story (its state, every attempt) is
-- sql/log/calls_of_delivery.sql and sql/log/delivery_history.sql.
SELECT a.id AS attempt_id,
       a.started_at AS called_at,
       e.clinic_id,
       c.code AS clinic_code,
       a.endpoint_id,
       a.url,
       a.event_id,
       a.event_type,
       a.delivery_id,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       a.test,
       a.request_headers,
       a.request_body,
       a.response_headers,
       a.response_body,
       a.response_truncated,
       a.worker
  FROM webhooks.attempts a
  JOIN webhooks.endpoints e ON e.id = a.endpoint_id
  LEFT JOIN clinic.clinics c ON c.id = e.clinic_id
 WHERE a.id = :attempt_id
   AND a.started_at = :called_at::timestamptz;
