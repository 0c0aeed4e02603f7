-- Claims up to $1 due deliveries for worker $2, leasing them for $3 seconds,
-- from the endpoints $4 whose claim locks this transaction holds
-- (lock_due_endpoints.sql, run just before in the same transaction), and
-- returns what is needed to render, sign and send each one.
--
-- * Fair: endpoints with due work are visited in random order, so one
--   endpoint's backlog cannot take the whole batch.
-- * Bulkheads: an endpoint gets at most max_in_flight deliveries in flight,
--   counted across every worker process: the claim lock makes this the only
--   claimer of these endpoints, and this statement's snapshot, taken after
--   the lock, sees every earlier claim.
-- * First attempts are picked before retries (see `picked`).
-- * Lanes: on an ordered endpoint, only the oldest unfinished delivery of a
--   subject (a visit, a user) is due; later ones wait until it succeeds or
--   finally fails.
-- * No row locks are needed to pick: nobody else claims these endpoints, and
--   the UPDATE re-checks each row, skipping one that changed meanwhile
--   (a redelivery, an endpoint deletion).
WITH endpoint_slots AS (
    SELECT e.id,
           e.ordered,
           e.max_in_flight - (SELECT count(*)
                                FROM webhooks.deliveries f
                               WHERE f.endpoint_id = e.id
                                 AND f.state = 'delivering') AS free
      FROM webhooks.endpoints e
     WHERE e.id = ANY ($4::bigint[])
       AND e.enabled
     ORDER BY random()
),
picked AS (
    SELECT p.id, p.attempts
      FROM endpoint_slots s
     CROSS JOIN LATERAL (
            -- First attempts before retries, so a backlog of failing
            -- deliveries cannot starve fresh events of the same endpoint.
            SELECT f.id, f.attempts FROM (
                SELECT d.id, d.attempts
                  FROM webhooks.deliveries d
                 WHERE d.endpoint_id = s.id
                   AND d.state = 'pending'
                   AND d.attempts = d.retry_base
                   AND d.next_attempt_at <= now()
                   AND (NOT s.ordered OR NOT EXISTS (
                            SELECT 1
                              FROM webhooks.deliveries earlier
                             WHERE earlier.endpoint_id = d.endpoint_id
                               AND earlier.subject = d.subject
                               AND earlier.id < d.id
                               AND earlier.state IN ('pending', 'delivering')))
                 ORDER BY d.next_attempt_at, d.id
                 LIMIT greatest(s.free, 0)
            ) f
            UNION ALL
            SELECT r.id, r.attempts FROM (
                SELECT d.id, d.attempts
                  FROM webhooks.deliveries d
                 WHERE d.endpoint_id = s.id
                   AND d.state = 'pending'
                   AND d.attempts > d.retry_base
                   AND d.next_attempt_at <= now()
                   AND (NOT s.ordered OR NOT EXISTS (
                            SELECT 1
                              FROM webhooks.deliveries earlier
                             WHERE earlier.endpoint_id = d.endpoint_id
                               AND earlier.subject = d.subject
                               AND earlier.id < d.id
                               AND earlier.state IN ('pending', 'delivering')))
                 ORDER BY d.next_attempt_at, d.id
                 LIMIT greatest(s.free, 0)
            ) r
            LIMIT greatest(s.free, 0)
           ) p
     LIMIT $1
),
claimed AS (
    UPDATE webhooks.deliveries d
       SET state = 'delivering',
           attempts = d.attempts + 1,
           lease_expires_at = now() + make_interval(secs => $3),
           leased_by = $2
      FROM picked
     WHERE d.id = picked.id
       AND d.state = 'pending'
       AND d.attempts = picked.attempts
    RETURNING d.id, d.attempts, d.retry_base, d.event_id, d.endpoint_id
)
SELECT c.id                              AS delivery_id,
       c.attempts                        AS attempt,
       c.attempts - c.retry_base         AS schedule_position,
       ev.id                             AS event_id,
       ev.type                           AS event_type,
       webhooks.unix_seconds(ev.created_at) AS created,
       cl.code                           AS clinic_code,
       ev.snapshot::text                 AS snapshot,
       e.id                              AS endpoint_id,
       e.url,
       e.version,
       e.secret
  FROM claimed c
  JOIN webhooks.events ev ON ev.id = c.event_id
  JOIN webhooks.endpoints e ON e.id = c.endpoint_id
  LEFT JOIN clinic.clinics cl ON cl.id = ev.clinic_id
 ORDER BY c.id
