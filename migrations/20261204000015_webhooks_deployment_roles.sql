-- The group roles a deployment needs, beside clinic_webhooks_reader (the
-- panel's read-only one, migration 7), each with the least it needs. They
-- cannot log in; grant them to login roles (sql/roles/login_roles.sql):
--
--   the migrating owner  the role that runs `clinic-webhooks migrate` owns
--                        the schemas, tables and functions; any login role
--                        with CREATE on the database will do
--   clinic_webhooks_worker  `clinic-webhooks run` with
--                        database.migrate_on_start = false: claims, sends,
--                        logs, recovers, runs maintenance (through
--                        webhooks.run_maintenance, which runs as its owner)
--   clinic_webhooks_app  the application's own role: its writes fire the
--                        triggers, which enqueue in its transaction
--
-- Access through a partitioned table is checked on that table only, so the
-- partitions maintenance makes later need no grants of their own.
-- Creating a role needs CREATEROLE; without it this migration only says so.

-- Maintenance creates and drops partitions, which only their owner may:
-- it runs as the owner, with a search path nobody else can write to.
ALTER FUNCTION webhooks.run_maintenance(interval, interval, integer, timestamptz)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION webhooks.run_maintenance(interval, interval, integer, timestamptz) FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_worker') THEN
        CREATE ROLE clinic_webhooks_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_app') THEN
        CREATE ROLE clinic_webhooks_app NOLOGIN;
    END IF;

    GRANT USAGE ON SCHEMA webhooks, clinic TO clinic_webhooks_worker;
    GRANT SELECT ON clinic.clinics TO clinic_webhooks_worker;
    GRANT SELECT, UPDATE ON webhooks.deliveries TO clinic_webhooks_worker;
    -- The queue's gauges read the queue partition alone.
    GRANT SELECT ON webhooks.deliveries_live TO clinic_webhooks_worker;
    GRANT SELECT ON webhooks.events, webhooks.endpoints TO clinic_webhooks_worker;
    -- /readyz compares the applied migrations with the binary's.
    IF to_regclass('webhooks._sqlx_migrations') IS NOT NULL THEN
        GRANT SELECT ON webhooks._sqlx_migrations TO clinic_webhooks_worker;
    END IF;
    GRANT UPDATE (enabled, failing_since, disabled_at, disabled_reason)
        ON webhooks.endpoints TO clinic_webhooks_worker;
    GRANT SELECT, INSERT, UPDATE ON webhooks.attempts TO clinic_webhooks_worker;
    GRANT SELECT, INSERT, UPDATE, DELETE ON webhooks.workers TO clinic_webhooks_worker;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA webhooks TO clinic_webhooks_worker;
    GRANT EXECUTE ON FUNCTION webhooks.run_maintenance(interval, interval, integer, timestamptz)
        TO clinic_webhooks_worker;

    -- The triggers run in the application's transaction, as its role: they
    -- read who subscribes and write the event and its deliveries.
    GRANT USAGE ON SCHEMA webhooks TO clinic_webhooks_app;
    GRANT SELECT (id, clinic_id, enabled, event_types) ON webhooks.endpoints TO clinic_webhooks_app;
    GRANT INSERT ON webhooks.events, webhooks.deliveries TO clinic_webhooks_app;
    -- The triggers' INSERT ... RETURNING reads back what they wrote.
    GRANT SELECT (id, type, clinic_id, subject) ON webhooks.events TO clinic_webhooks_app;
    GRANT USAGE ON SEQUENCE webhooks.deliveries_id_seq TO clinic_webhooks_app;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'clinic_webhooks_worker and clinic_webhooks_app were not set up (this role lacks CREATEROLE): %', SQLERRM;
END
$$;
