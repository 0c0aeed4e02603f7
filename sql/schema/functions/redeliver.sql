-- Current definition of webhooks.redeliver, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Send one delivery again, now, with a fresh retry schedule. Keeps the event
-- id (webhook-id); the new calls appear in the log as further attempts.
-- A delivery that is in flight right now is left alone.
CREATE OR REPLACE FUNCTION webhooks.redeliver(p_delivery_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    found_id bigint;
BEGIN
    -- A finished delivery moves from deliveries_done back into the queue.
    -- When another transaction moved the row meanwhile, PostgreSQL cannot
    -- follow it and raises a serialization failure: look again.
    FOR try IN 1..10 LOOP
        BEGIN
            UPDATE webhooks.deliveries
               SET state = 'pending',
                   next_attempt_at = now(),
                   retry_base = attempts,
                   finished_at = NULL
             WHERE id = p_delivery_id
               AND state <> 'delivering'
            RETURNING id INTO found_id;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    IF found_id IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM webhooks.deliveries WHERE id = p_delivery_id) THEN
            RAISE EXCEPTION 'no delivery with id % (past retention, or never made)', p_delivery_id
                USING ERRCODE = 'no_data_found';
        END IF;
        RAISE NOTICE 'delivery % is in flight; it was left alone', p_delivery_id;
        RETURN NULL;
    END IF;
    PERFORM pg_notify('clinic_webhooks', '');
    RETURN found_id;
END
$$;
