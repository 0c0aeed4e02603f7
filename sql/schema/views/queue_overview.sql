-- Current definition of webhooks.queue_overview, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Per endpoint: what waits, what is in flight, how old the oldest pending
-- delivery is, and when the next one is due.
CREATE OR REPLACE VIEW webhooks.queue_overview AS
SELECT e.id                                                        AS endpoint_id,
       e.clinic_id,
       e.version,
       e.enabled,
       e.disabled_reason,
       count(d.id) FILTER (WHERE d.state = 'pending')              AS pending,
       count(d.id) FILTER (WHERE d.state = 'pending' AND d.next_attempt_at <= now())
                                                                   AS due_now,
       count(d.id) FILTER (WHERE d.state = 'delivering')           AS delivering,
       count(d.id) FILTER (WHERE d.state = 'failed')               AS failed,
       now() - min(d.created_at) FILTER (WHERE d.state = 'pending') AS oldest_pending_age,
       min(d.next_attempt_at) FILTER (WHERE d.state = 'pending')   AS next_due_at
  FROM webhooks.endpoints e
  LEFT JOIN webhooks.deliveries d
    ON d.endpoint_id = e.id AND d.state IN ('pending', 'delivering', 'failed')
 GROUP BY e.id;
