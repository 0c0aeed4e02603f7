-- Current definition of webhooks.subscribers, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- The enabled endpoints of a clinic subscribed to an event type. A plain
-- SQL function, so the planner inlines it into the triggers' statements.
CREATE OR REPLACE FUNCTION webhooks.subscribers(p_clinic_id bigint, p_type text) RETURNS SETOF bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT e.id
      FROM webhooks.endpoints e
     WHERE e.clinic_id = p_clinic_id
       AND e.enabled
       AND (e.event_types IS NULL OR p_type = ANY (e.event_types))
$$;
