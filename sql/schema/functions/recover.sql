-- Current definition of webhooks.recover, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Bulk recovery (like Svix's "recover"): everything that finally failed for
-- an endpoint since a time is sent again. Returns how many.
CREATE OR REPLACE FUNCTION webhooks.recover(p_endpoint_id bigint, p_since timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    -- The deliveries move from deliveries_done back into the queue; a row
    -- another transaction moved meanwhile is a serialization failure: again.
    FOR try IN 1..10 LOOP
        BEGIN
            UPDATE webhooks.deliveries
               SET state = 'pending',
                   next_attempt_at = now(),
                   retry_base = attempts,
                   finished_at = NULL
             WHERE endpoint_id = p_endpoint_id
               AND state = 'failed'
               AND finished_at >= p_since;
            GET DIAGNOSTICS n = ROW_COUNT;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    IF n > 0 THEN
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
    RETURN n;
END
$$;
