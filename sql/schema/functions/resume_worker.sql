-- Current definition of webhooks.resume_worker, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- A registered worker whose connection was lost takes its presence lock
-- again on a new session (after a database restart, say). What others took
-- back from it meanwhile stays taken: its late results are fenced out.
CREATE OR REPLACE FUNCTION webhooks.resume_worker(p_id integer) RETURNS void
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
