-- Current definition of webhooks.visit_snapshot, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- The visit part of every visit.* payload, version-neutral: ids as numbers,
-- times as unix seconds, the status as both code and name (as of the change).
CREATE OR REPLACE FUNCTION webhooks.visit_snapshot(v clinic.visits, status_name text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'id', v.id,
        'member_id', v.member_id,
        'provider_id', v.provider_id,
        'start', webhooks.unix_seconds(v.start_at),
        'end', webhooks.unix_seconds(v.end_at),
        'actual_start', webhooks.unix_seconds(v.actual_start),
        'actual_end', webhooks.unix_seconds(v.actual_end),
        'status', v.status,
        'status_name', status_name,
        'status_updated_by', v.status_updated_by)
$$;
