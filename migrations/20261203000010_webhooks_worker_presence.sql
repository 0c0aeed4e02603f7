-- Worker presence: a worker process that dies gives its deliveries back
-- within seconds, not after its leases expire.
--
-- Each worker holds a session-level advisory lock (1128813, its id) on a
-- connection of its own for as long as it runs (webhooks.register_worker).
-- When the process dies (SIGKILL, OOM, a crash), the kernel closes its
-- sockets, PostgreSQL ends the session and the lock is free. Every running
-- worker looks once a second (webhooks.recover_lost_deliveries): a worker
-- whose lock has been free for a grace period is gone, and its deliveries
-- are sent again at once; their leases stop counting against any bulkhead.
-- The grace lets a worker whose connection dropped (a database restart)
-- take its lock again first, so that its calls in flight are not sent
-- twice. A worker that is alive but stalled or cut off keeps its lock; its
-- deliveries are taken back when their leases expire, as before.

CREATE TABLE webhooks.workers (
    -- The presence lock's key: (1128813, id).
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- worker.name (host-pid-random unless configured); deliveries.leased_by.
    name       text NOT NULL CONSTRAINT workers_name_key UNIQUE,
    started_at timestamptz NOT NULL DEFAULT now(),
    -- Since when another worker has seen this one's presence lock free.
    lost_since timestamptz
);

COMMENT ON TABLE webhooks.workers IS
    'Running worker processes; each holds the advisory lock (1128813, id) while it lives.';

-- Machine-readable kinds: 'worker_lost' for an attempt taken back from a
-- worker that died, 'protocol' for a receiver whose answer was not HTTP.
-- An attempt that failed has a kind; a success has none; a late result has
-- the kind of what its call met, if anything.
ALTER TABLE webhooks.attempts
    DROP CONSTRAINT attempts_error_kind_known,
    DROP CONSTRAINT attempts_error_kind_iff_not_succeeded,
    ADD CONSTRAINT attempts_error_kind_known CHECK (error_kind IN (
        'timeout', 'dns', 'connect', 'tls', 'protocol', 'status', 'redirect', 'body',
        'refused_target', 'lease_expired', 'worker_lost', 'internal')),
    ADD CONSTRAINT attempts_error_kind_iff_failed CHECK (
        CASE outcome::text
            WHEN 'succeeded' THEN error_kind IS NULL
            WHEN 'late' THEN true
            ELSE error_kind IS NOT NULL
        END);

-- Takes back the deliveries in flight for a worker named in p_gone, and
-- those whose lease expired, as worker p_by: each is pending again at once,
-- and its lost attempt is logged as 'abandoned' (by p_by; the error names
-- the worker that lost it). An attempt lost with a dead worker does not use
-- up a place in the retry schedule (retry_base moves with it), so it is
-- claimed again as what it was, a first attempt or a retry; one lost to an
-- expired lease does, as a timeout would. A late result of either replaces
-- its 'abandoned' row (sql/worker/record_attempts.sql).
CREATE FUNCTION webhooks.take_back_deliveries(p_gone text[], p_by text,
                                              OUT worker_lost integer,
                                              OUT lease_expired integer)
LANGUAGE sql AS $$
    WITH lost AS (
        SELECT d.id, d.attempts, d.endpoint_id, d.leased_by,
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
        INSERT INTO webhooks.attempts (delivery_id, endpoint_id, attempt, started_at, url,
                                       outcome, error_kind, error, next_attempt_at, worker)
        SELECT x.id, x.endpoint_id, x.attempts, now(), e.url, 'abandoned',
               CASE WHEN x.gone THEN 'worker_lost' ELSE 'lease_expired' END,
               'worker ' || coalesce(x.leased_by, '?')
                   || CASE WHEN x.gone
                           THEN ' is gone (its database session ended) without reporting this attempt'
                           ELSE ' did not report this attempt before its lease expired' END
                   || '; ' || p_by || ' took the delivery back to send it again',
               now(), p_by
          FROM lost x
          JOIN webhooks.endpoints e ON e.id = x.endpoint_id
        RETURNING error_kind
    )
    SELECT (count(*) FILTER (WHERE error_kind = 'worker_lost'))::int,
           (count(*) FILTER (WHERE error_kind = 'lease_expired'))::int
      FROM logged
$$;

-- Registers worker p_name on the calling session and takes its presence
-- lock, which the session holds until it ends. A name used before by a
-- process that is gone (a fixed worker.name, restarted) is taken over, with
-- what that process had in flight. Returns the worker's id.
CREATE FUNCTION webhooks.register_worker(p_name text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    worker_id integer;
BEGIN
    SELECT id INTO worker_id FROM webhooks.workers WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO webhooks.workers (name) VALUES (p_name) RETURNING id INTO worker_id;
        PERFORM pg_advisory_lock(1128813, worker_id);
        RETURN worker_id;
    END IF;
    IF NOT pg_try_advisory_lock(1128813, worker_id) THEN
        RAISE EXCEPTION 'a worker named % is running already; worker.name must be unique per process', p_name
            USING ERRCODE = 'unique_violation';
    END IF;
    PERFORM webhooks.take_back_deliveries(ARRAY[p_name], p_name);
    UPDATE webhooks.workers SET started_at = now(), lost_since = NULL WHERE id = worker_id;
    RETURN worker_id;
END
$$;

-- A registered worker whose connection was lost takes its presence lock
-- again on a new session (after a database restart, say). What others took
-- back from it meanwhile stays taken: its late results are fenced out.
CREATE FUNCTION webhooks.resume_worker(p_id integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_lock(1128813, p_id) THEN
        RAISE EXCEPTION 'the presence lock of worker % is held by another session', p_id
            USING ERRCODE = 'lock_not_available';
    END IF;
    UPDATE webhooks.workers SET lost_since = NULL WHERE id = p_id AND lost_since IS NOT NULL;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM webhooks.workers WHERE id = p_id) THEN
        RAISE EXCEPTION 'worker % was forgotten while its connection was lost; register again', p_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- Run by every worker once a second, as worker p_worker: notes which other
-- workers' presence locks are free (read from pg_locks, so looking takes no
-- lock), takes back the deliveries of those free for p_grace_seconds and
-- those whose lease expired, and forgets workers that are gone and hold
-- nothing. A worker never takes its own deliveries back by presence (only
-- by an expired lease). Returns how many deliveries came back, by reason.
CREATE FUNCTION webhooks.recover_lost_deliveries(p_worker text, p_grace_seconds double precision,
                                                 OUT worker_lost integer,
                                                 OUT lease_expired integer)
LANGUAGE plpgsql AS $$
DECLARE
    gone text[];
BEGIN
    WITH held AS (
        SELECT l.objid::bigint AS id
          FROM pg_locks l
         WHERE l.locktype = 'advisory'
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = 1128813
           AND l.objsubid = 2
           AND l.granted
    )
    UPDATE webhooks.workers w
       SET lost_since = CASE WHEN w.lost_since IS NULL THEN now() END
     WHERE w.name <> p_worker
       AND (w.id IN (SELECT id FROM held)) = (w.lost_since IS NOT NULL);

    SELECT coalesce(array_agg(w.name), '{}') INTO gone
      FROM webhooks.workers w
     WHERE w.name <> p_worker
       AND w.lost_since < now() - make_interval(secs => p_grace_seconds);

    SELECT t.worker_lost, t.lease_expired INTO worker_lost, lease_expired
      FROM webhooks.take_back_deliveries(gone, p_worker) t;

    DELETE FROM webhooks.workers w
     WHERE w.name = ANY (gone)
       AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d
                        WHERE d.state = 'delivering' AND d.leased_by = w.name);
END
$$;

-- A worker that stops cleanly leaves no trace.
CREATE FUNCTION webhooks.deregister_worker(p_name text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM webhooks.workers w
     WHERE w.name = p_name
       AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d
                        WHERE d.state = 'delivering' AND d.leased_by = w.name)
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_reader') THEN
        GRANT SELECT ON webhooks.workers TO clinic_webhooks_reader;
    END IF;
END
$$;
