-- Current definition of webhooks.uuid_v7, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Time-ordered (version 7) UUIDs: new events land on the right edge of the
-- indexes over them instead of on random pages, which keeps the triggers'
-- index inserts (and the WAL they write after a checkpoint) small.
CREATE OR REPLACE FUNCTION webhooks.uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
