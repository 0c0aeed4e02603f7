-- Takes back deliveries whose worker did not report before its lease expired
-- (it crashed, was killed, or lost the database), logs the lost attempt as
-- 'abandoned', and makes each delivery due again at once. Returns how many.
WITH expired AS (
    SELECT d.id, d.attempts, d.endpoint_id, d.leased_by
      FROM webhooks.deliveries d
     WHERE d.state = 'delivering'
       AND d.lease_expires_at < now()
       FOR UPDATE SKIP LOCKED
),
reset AS (
    UPDATE webhooks.deliveries d
       SET state = 'pending',
           next_attempt_at = now(),
           lease_expires_at = NULL,
           leased_by = NULL,
           last_error = 'lease expired'
      FROM expired x
     WHERE d.id = x.id
),
logged AS (
    INSERT INTO webhooks.attempts (delivery_id, endpoint_id, attempt, started_at, url, outcome,
                                   error_kind, error, next_attempt_at, worker)
    SELECT x.id, x.endpoint_id, x.attempts, now(), e.url, 'abandoned', 'lease_expired',
           'worker ' || coalesce(x.leased_by, '?')
               || ' did not report this attempt before its lease expired; it is sent again',
           now(), x.leased_by
      FROM expired x
      JOIN webhooks.endpoints e ON e.id = x.endpoint_id
    RETURNING 1
)
SELECT count(*) AS "recovered!" FROM logged
