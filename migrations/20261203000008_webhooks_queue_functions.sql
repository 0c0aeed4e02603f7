-- The worker's claim. Its design notes are the comment at the top of the
-- body, so that they travel with every later definition of the function
-- (and show in psql's \sf webhooks.claim_deliveries).
CREATE FUNCTION webhooks.claim_deliveries(p_limit integer, p_worker text,
                                          p_lease_seconds double precision,
                                          p_finished_ids bigint[],
                                          p_finished_attempts integer[])
RETURNS TABLE (delivery_id bigint, attempt integer, schedule_position integer,
               event_id uuid, event_type text, created bigint, clinic_code text,
               snapshot text, endpoint_id bigint, url text, version text, secret text)
LANGUAGE plpgsql AS $$
-- One call per claim (one round trip, one transaction of its own) that
-- runs two statements.
--
-- It claims up to p_limit due deliveries for worker p_worker, leases them
-- for p_lease_seconds (the lease's fencing token is the attempt number),
-- and returns what is needed to render, sign and send each:
--
-- * Fair: endpoints with due work are visited in random order, so one
--   endpoint's backlog cannot take the whole batch.
-- * Bulkheads: an endpoint has at most max_in_flight requests in flight,
--   counted across every worker process. The first statement takes a
--   transaction-scoped advisory lock per endpoint with due work that
--   nobody else is claiming for; the second counts and claims with a
--   snapshot taken after the locks, so it sees every claim committed before
--   them. (In one statement, the snapshot would be taken before the lock,
--   and a claim committed in between would be invisible to the count.)
-- * A finished call is no request in flight: the claiming worker passes its
--   calls that are over but not yet logged as (delivery id, attempt) pairs
--   (p_finished_ids, p_finished_attempts), and the bulkhead counts every
--   'delivering' row except those. The pair is the lease's fencing token: a
--   stale pair can only match a row that is no longer delivering or is on a
--   later attempt, so it never hides a request in flight. Another worker's
--   finished calls are not known here and still count: the bound stays
--   exact across processes, and conservative. Such a delivery stays
--   'delivering' (its lane waits for its result, lease recovery knows it)
--   until its log write commits.
-- * First attempts are picked before retries, so a backlog of failing
--   deliveries cannot starve fresh events of the same endpoint.
-- * Lanes: on an ordered endpoint, only the oldest unfinished delivery of a
--   subject (a visit, a user) is due; later ones wait until it succeeds or
--   finally fails.
-- * A claim reads what it takes, not the backlog: "has this endpoint due
--   work?" is one scalar-subquery probe per endpoint into each due index.
--   Scalar subqueries are never turned into joins, and the ORDER BY keeps
--   each on its index however few rows the statistics (or a plan cached
--   while the queue was empty) say there are; as an EXISTS, the planner
--   hashed every due delivery of every endpoint once per claim whenever the
--   queue's statistics were older than the burst.
-- * No row locks are needed to pick: nobody else claims these endpoints,
--   and the UPDATE re-checks each row, skipping one that changed meanwhile
--   (a redelivery, an endpoint deletion).
--
-- The locks are transaction-scoped: call it in a transaction of its own.
-- The worker does, on a connection that commits asynchronously: a claim lost
-- in a server crash is harmless, its deliveries are still pending.
-- Advisory lock keys (1128812, n): n = 0 is the triggers' notifier slot
-- (webhooks.wake_workers), n > 0 one claimer per endpoint.
#variable_conflict use_column
DECLARE
    locked bigint[];
BEGIN
    -- Only endpoints with due work and room in their bulkhead are tried
    -- (OFFSET 0 keeps the planner from trying the lock first), in random
    -- order, and no more than could get a delivery: the locks take room in
    -- the server's lock table. (The room is counted again, exactly, below.)
    SELECT array_agg(l.id) INTO locked
      FROM (SELECT due.id
              FROM (SELECT e.id
                      FROM webhooks.endpoints e
                     WHERE e.enabled
                       -- One probe per endpoint into each due index (see
                       -- the notes at the top).
                       AND coalesce((SELECT true
                                       FROM webhooks.deliveries p
                                      WHERE p.endpoint_id = e.id
                                        AND p.state = 'pending'
                                        AND p.attempts = p.retry_base
                                        AND p.next_attempt_at <= now()
                                      ORDER BY p.next_attempt_at
                                      LIMIT 1),
                                    (SELECT true
                                       FROM webhooks.deliveries p
                                      WHERE p.endpoint_id = e.id
                                        AND p.state = 'pending'
                                        AND p.attempts > p.retry_base
                                        AND p.next_attempt_at <= now()
                                      ORDER BY p.next_attempt_at
                                      LIMIT 1),
                                    false)
                       AND e.max_in_flight > (SELECT count(*)
                                                FROM webhooks.deliveries f
                                               WHERE f.endpoint_id = e.id
                                                 AND f.state = 'delivering'
                                                 AND (f.id, f.attempts, f.leased_by) NOT IN (
                                                     SELECT u.id, u.attempt, p_worker
                                                       FROM unnest(p_finished_ids,
                                                                   p_finished_attempts)
                                                            AS u (id, attempt)))
                     ORDER BY random()
                    OFFSET 0) due
             WHERE pg_try_advisory_xact_lock(1128812, (due.id % 2147483646)::int + 1)
             LIMIT p_limit) l;
    IF locked IS NULL THEN
        RETURN;
    END IF;
    -- A new statement, a new snapshot: it sees every claim committed
    -- before the locks above were taken.
    RETURN QUERY
    WITH endpoint_slots AS (
        SELECT e.id,
               e.ordered,
               e.max_in_flight - (SELECT count(*)
                                    FROM webhooks.deliveries f
                                   WHERE f.endpoint_id = e.id
                                     AND f.state = 'delivering'
                                     -- Calls of this worker that are over:
                                     -- not requests in flight any more.
                                     AND (f.id, f.attempts, f.leased_by) NOT IN (
                                         SELECT u.id, u.attempt, p_worker
                                           FROM unnest(p_finished_ids, p_finished_attempts)
                                                AS u (id, attempt))) AS free
          FROM webhooks.endpoints e
         WHERE e.id = ANY (locked)
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
         LIMIT p_limit
    ),
    claimed AS (
        UPDATE webhooks.deliveries d
           SET state = 'delivering',
               attempts = d.attempts + 1,
               lease_expires_at = now() + make_interval(secs => p_lease_seconds),
               leased_by = p_worker
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
     ORDER BY c.id;
END
$$;
