-- Current definition of webhooks.event_types, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- The six event types of the public contract, in one place.
CREATE OR REPLACE FUNCTION webhooks.event_types() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY[
        'user.created',
        'visit.created',
        'visit.updated',
        'visit.ended',
        'visit.note.signed_and_sent',
        'visit.invoice.processed'
    ]::text[]
$$;
