-- Queue health per endpoint: pending, due now, in flight, failed, and the age
-- of the oldest pending delivery. Used by `clinic-webhooks status`; a DBA can
-- run it as is:  psql -f sql/admin/status.sql
-- (The "name!" aliases tell the compile-time check, sqlx, that a column of
-- the view is never NULL.)
SELECT endpoint_id AS "endpoint_id!",
       clinic_id AS "clinic_id!",
       version AS "version!",
       enabled AS "enabled!",
       disabled_reason,
       pending AS "pending!",
       due_now AS "due_now!",
       delivering AS "delivering!",
       failed AS "failed!",
       round(extract(epoch FROM oldest_pending_age))::bigint AS oldest_pending_s
  FROM webhooks.queue_overview
 ORDER BY endpoint_id
