-- Current definition of webhooks.endpoints_deleted, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- What ON DELETE CASCADE foreign keys would have done.
CREATE OR REPLACE FUNCTION webhooks.endpoints_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhooks.attempts a USING old_rows o WHERE a.endpoint_id = o.id;
    DELETE FROM webhooks.deliveries d USING old_rows o WHERE d.endpoint_id = o.id;
    RETURN NULL;
END
$$;
