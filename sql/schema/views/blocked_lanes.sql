-- Current definition of webhooks.blocked_lanes, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Ordered lanes with later events waiting behind an unfinished head: which
-- delivery blocks them, its state, attempts, last error and next attempt.
CREATE OR REPLACE VIEW webhooks.blocked_lanes AS
SELECT head.endpoint_id,
       head.subject,
       head.id                AS blocked_by_delivery,
       head.event_id          AS blocked_by_event,
       head.state             AS head_state,
       head.attempts          AS head_attempts,
       head.last_status       AS head_last_status,
       head.last_error        AS head_last_error,
       head.next_attempt_at   AS head_next_attempt_at,
       waiting.n              AS waiting,
       waiting.oldest         AS oldest_waiting_since
  FROM (SELECT DISTINCT ON (d.endpoint_id, d.subject) d.*
          FROM webhooks.deliveries d
         WHERE d.state IN ('pending', 'delivering')
         ORDER BY d.endpoint_id, d.subject, d.id) head
  JOIN webhooks.endpoints e ON e.id = head.endpoint_id AND e.ordered
 CROSS JOIN LATERAL (
        SELECT count(*) AS n, min(w.created_at) AS oldest
          FROM webhooks.deliveries w
         WHERE w.endpoint_id = head.endpoint_id
           AND w.subject = head.subject
           AND w.id > head.id
           AND w.state = 'pending') waiting
 WHERE waiting.n > 0
   AND (head.state = 'delivering' OR head.attempts > head.retry_base);
