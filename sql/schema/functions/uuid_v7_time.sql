-- Current definition of webhooks.uuid_v7_time, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- The time a version 7 UUID begins with (to millisecond precision).
CREATE OR REPLACE FUNCTION webhooks.uuid_v7_time(p_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_timestamp(('x' || lpad(substr(replace(p_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint
                        / 1000.0)
$$;
