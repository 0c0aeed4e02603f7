-- Current definition of webhooks.take_back_deliveries, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Takes back the deliveries in flight for a worker named in p_gone, and
-- those whose lease expired, as worker p_by: each is pending again at once,
-- and its lost attempt is logged as 'abandoned' (by p_by; the error names
-- the worker that lost it). An attempt lost with a dead worker does not use
-- up a place in the retry schedule (retry_base moves with it), so it is
-- claimed again as what it was, a first attempt or a retry; one lost to an
-- expired lease does, as a timeout would. A late result of either replaces
-- its 'abandoned' row (sql/worker/record_attempts.sql).
CREATE OR REPLACE FUNCTION webhooks.take_back_deliveries(p_gone text[], p_by text,
                                              OUT worker_lost integer,
                                              OUT lease_expired integer)
LANGUAGE sql AS $$
    WITH lost AS (
        SELECT d.id, d.attempts, d.endpoint_id, d.event_id, d.test, d.leased_by,
               d.leased_by = ANY (p_gone) AS gone
          FROM webhooks.deliveries d
         WHERE d.state = 'delivering'
           AND (d.leased_by = ANY (p_gone) OR d.lease_expires_at < now())
           FOR UPDATE OF d SKIP LOCKED
    ),
    reset AS (
        UPDATE webhooks.deliveries d
           SET state = 'pending',
               next_attempt_at = now(),
               retry_base = d.retry_base + CASE WHEN x.gone THEN 1 ELSE 0 END,
               lease_expires_at = NULL,
               leased_by = NULL,
               last_error = CASE WHEN x.gone THEN 'worker lost' ELSE 'lease expired' END
          FROM lost x
         WHERE d.id = x.id
    ),
    logged AS (
        INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_id, event_type, attempt,
                                       started_at, url, outcome, error_kind, error,
                                       next_attempt_at, worker, test)
        SELECT x.id, x.endpoint_id, x.event_id, coalesce(ev.type, ''), x.attempts, now(), e.url,
               'abandoned',
               CASE WHEN x.gone THEN 'worker_lost' ELSE 'lease_expired' END,
               'worker ' || coalesce(x.leased_by, '?')
                   || CASE WHEN x.gone
                           THEN ' is gone (its database session ended) without reporting this attempt'
                           ELSE ' did not report this attempt before its lease expired' END
                   || '; ' || p_by || ' took the delivery back to send it again',
               now(), p_by, x.test
          FROM lost x
          JOIN webhooks.endpoints e ON e.id = x.endpoint_id
          LEFT JOIN webhooks.events ev ON ev.id = x.event_id
        RETURNING error_kind
    )
    SELECT (count(*) FILTER (WHERE error_kind = 'worker_lost'))::int,
           (count(*) FILTER (WHERE error_kind = 'lease_expired'))::int
      FROM logged
$$;
