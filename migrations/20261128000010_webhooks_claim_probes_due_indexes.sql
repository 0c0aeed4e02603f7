-- The claim's first statement asked "does this endpoint have due work?" as
-- an EXISTS, which the planner may turn into a semi-join: on a queue table
-- whose statistics were taken while it was nearly empty (always, at the
-- start of a burst), it chose to hash every due delivery of every endpoint
-- once per claim. Under a backlog of 20,000, that was half of each claim's
-- time (BENCHMARKS.md, third session). Now it probes each endpoint's two
-- due indexes with scalar subqueries, which are never turned into joins,
-- ordered as their index is, so they use it even on a plan cached while the
-- queue was empty.
-- Otherwise unchanged from migrations/*_webhooks_claim_function.sql.
CREATE OR REPLACE FUNCTION webhooks.claim_deliveries(p_limit integer, p_worker text,
                                          p_lease_seconds double precision)
RETURNS TABLE (delivery_id bigint, attempt integer, schedule_position integer,
               event_id uuid, event_type text, created bigint, clinic_code text,
               snapshot text, endpoint_id bigint, url text, version text, secret text)
LANGUAGE plpgsql AS $$
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
                       -- One probe per endpoint into each due index: scalar
                       -- subqueries are never turned into joins, and the
                       -- ORDER BY keeps each on its index however few rows
                       -- the statistics (or a plan cached while the queue
                       -- was empty) say there are.
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
                                                 AND f.state = 'delivering')
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
                                     AND f.state = 'delivering') AS free
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
