-- Queue health per endpoint: pending, due now, in flight, failed, and the age
-- of the oldest pending delivery. Used by `clinic-webhooks status`; a DBA can
-- run it as is:  psql -f sql/admin/status.sql
SELECT endpoint_id,
       clinic_id,
       version,
       enabled,
       disabled_reason,
       pending,
       due_now,
       delivering,
       failed,
       round(extract(epoch FROM oldest_pending_age))::bigint AS oldest_pending_s
  FROM webhooks.queue_overview
 ORDER BY endpoint_id
