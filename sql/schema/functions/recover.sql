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
    UPDATE webhooks.deliveries
       SET state = 'pending',
           next_attempt_at = now(),
           retry_base = attempts,
           finished_at = NULL
     WHERE endpoint_id = p_endpoint_id
       AND state = 'failed'
       AND finished_at >= p_since;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
    RETURN n;
END
$$;
