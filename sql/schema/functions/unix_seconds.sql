-- Current definition of webhooks.unix_seconds, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Whole seconds since the epoch, as the payloads carry them. STABLE, like
-- extract() on timestamptz: a function declared stricter than its body is
-- never inlined, and would be planned again in every trigger statement.
CREATE OR REPLACE FUNCTION webhooks.unix_seconds(t timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT floor(extract(epoch FROM t))::bigint
$$;
