-- Current definition of webhooks.recover_lost_deliveries, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Run by every worker once a second, as worker p_worker: notes which other
-- workers' presence locks are free (read from pg_locks, so looking takes no
-- lock), takes back the deliveries of those free for p_grace_seconds and
-- those whose lease expired, and forgets workers that are gone and hold
-- nothing. A worker never takes its own deliveries back by presence (only
-- by an expired lease). Returns how many deliveries came back, by reason.
CREATE OR REPLACE FUNCTION webhooks.recover_lost_deliveries(p_worker text, p_grace_seconds double precision,
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

    -- A delivery whose result its worker records meanwhile moves to
    -- deliveries_done, and PostgreSQL cannot follow the row to lock it (a
    -- serialization failure): look again, with a new snapshot.
    FOR try IN 1..10 LOOP
        BEGIN
            SELECT t.worker_lost, t.lease_expired INTO worker_lost, lease_expired
              FROM webhooks.take_back_deliveries(gone, p_worker) t;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;

    DELETE FROM webhooks.workers w
     WHERE w.name = ANY (gone)
       AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d
                        WHERE d.state = 'delivering' AND d.leased_by = w.name);
END
$$;
