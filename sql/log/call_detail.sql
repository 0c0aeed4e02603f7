-- The admin panel's detail of one call: exactly what was sent (headers and
-- body) and what came back (status, headers, body truncated at
-- http.max_response_body), and the error text.
--   psql -x -v attempt_id=123 -f sql/log/call_detail.sql
SELECT *
  FROM webhooks.delivery_log_detail
 WHERE attempt_id = :attempt_id;
