-- Current definition of webhooks.register_worker, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Registers worker p_name on the calling session and takes its presence
-- lock, which the session holds until it ends. A name used before by a
-- process that is gone (a fixed worker.name, restarted) is taken over, with
-- what that process had in flight. Returns the worker's id.
CREATE OR REPLACE FUNCTION webhooks.register_worker(p_name text) RETURNS integer
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
