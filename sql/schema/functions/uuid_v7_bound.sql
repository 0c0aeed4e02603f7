-- Current definition of webhooks.uuid_v7_bound, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- The smallest version 7 UUID of a time: the partition bounds of event ids.
CREATE OR REPLACE FUNCTION webhooks.uuid_v7_bound(p_at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(substring(int8send(floor(extract(epoch FROM p_at) * 1000)::bigint) FROM 3)
                      || '\x00000000000000000000'::bytea,
                  'hex')::uuid
$$;
