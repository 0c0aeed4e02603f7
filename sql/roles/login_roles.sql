-- Login roles for a deployment, one per party, each in the group role the
-- migrations made (migrations/*_webhooks_roles.sql and
-- *_webhooks_deployment_roles.sql). Run once
-- as a role with CREATEROLE, after `clinic-webhooks migrate`:
--   psql -v owner_password="'...'" -v worker_password="'...'" \
--        -v app_password="'...'" -v panel_password="'...'" -f sql/roles/login_roles.sql
--
--   webhooks_owner   runs `clinic-webhooks migrate` (owns the schemas; give
--                    it CREATE on the database before the first migrate)
--   webhooks_worker  `clinic-webhooks run` with migrate_on_start = false
--   clinic_app       the application (its writes fire the triggers); if
--                    the application already has a role, grant it
--                    clinic_webhooks_app instead
--   webhooks_panel   the admin panel's log pages and DBAs who only read
\set ON_ERROR_STOP 1
CREATE ROLE webhooks_owner LOGIN PASSWORD :owner_password;
CREATE ROLE webhooks_worker LOGIN PASSWORD :worker_password IN ROLE clinic_webhooks_worker;
CREATE ROLE clinic_app LOGIN PASSWORD :app_password IN ROLE clinic_webhooks_app;
CREATE ROLE webhooks_panel LOGIN PASSWORD :panel_password IN ROLE clinic_webhooks_reader;
-- The paged log queries prune partitions by their cursor only when planned
-- for its value (README, "Retention"); and they read a few index pages,
-- where compiling a plan (JIT) would cost more than running it.
ALTER ROLE webhooks_panel SET plan_cache_mode = force_custom_plan;
ALTER ROLE webhooks_panel SET jit = off;
