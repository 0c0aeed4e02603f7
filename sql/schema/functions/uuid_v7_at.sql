-- Current definition of webhooks.uuid_v7_at, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- A version 7 UUID for a given time: for importing history and for tests.
CREATE OR REPLACE FUNCTION webhooks.uuid_v7_at(p_at timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM p_at) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
