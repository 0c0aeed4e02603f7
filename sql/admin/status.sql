-- Queue health per endpoint: deliveries by state and the age of the oldest
-- one still pending. Used by `clinic-webhooks status`; a DBA can run it as is:
--   psql -f sql/admin/status.sql
SELECT e.id                                                     AS endpoint_id,
       e.clinic_id,
       e.version,
       e.enabled,
       e.disabled_reason,
       count(d.id) FILTER (WHERE d.state = 'pending')           AS pending,
       count(d.id) FILTER (WHERE d.state = 'delivering')        AS delivering,
       count(d.id) FILTER (WHERE d.state = 'succeeded')         AS succeeded,
       count(d.id) FILTER (WHERE d.state = 'failed')            AS failed,
       round(extract(epoch FROM now() - min(d.created_at) FILTER (WHERE d.state = 'pending')))::bigint
                                                                AS oldest_pending_s
  FROM webhooks.endpoints e
  LEFT JOIN webhooks.deliveries d ON d.endpoint_id = e.id
 GROUP BY e.id
 ORDER BY e.id;
