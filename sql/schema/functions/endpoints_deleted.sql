-- Current definition of webhooks.endpoints_deleted, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- What ON DELETE CASCADE foreign keys would have done.
CREATE OR REPLACE FUNCTION webhooks.endpoints_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhooks.attempts a USING old_rows o WHERE a.endpoint_id = o.id;
    -- A delivery whose result a worker records meanwhile moves to
    -- deliveries_done, and PostgreSQL cannot follow the row (a
    -- serialization failure): delete again, with a new snapshot.
    FOR try IN 1..10 LOOP
        BEGIN
            DELETE FROM webhooks.deliveries d USING old_rows o WHERE d.endpoint_id = o.id;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    RETURN NULL;
END
$$;
