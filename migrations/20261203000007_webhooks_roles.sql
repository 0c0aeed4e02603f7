-- A least-privilege role for the admin panel's log pages and for DBAs who
-- only read: the log, its detail and the health views, and the endpoint
-- settings without their secrets. Grant it to a login role:
--   CREATE ROLE panel LOGIN PASSWORD '...' IN ROLE clinic_webhooks_reader;
-- Creating a role needs CREATEROLE; without it this migration only says so.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_reader') THEN
        CREATE ROLE clinic_webhooks_reader NOLOGIN;
    END IF;
    GRANT USAGE ON SCHEMA webhooks TO clinic_webhooks_reader;
    GRANT SELECT ON webhooks.delivery_log, webhooks.delivery_log_detail,
                    webhooks.queue_overview, webhooks.stuck_deliveries,
                    webhooks.blocked_lanes, webhooks.endpoint_health
        TO clinic_webhooks_reader;
    GRANT SELECT (id, clinic_id, url, version, event_types, enabled, description, ordered,
                  max_in_flight, failing_since, disabled_at, disabled_reason,
                  created_at, updated_at)
        ON webhooks.endpoints TO clinic_webhooks_reader;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'clinic_webhooks_reader was not set up (this role lacks CREATEROLE): %', SQLERRM;
END
$$;
