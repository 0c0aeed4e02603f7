-- Current definition of webhooks.stuck_deliveries, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Deliveries whose lease has expired: the worker that claimed them stopped
-- reporting. A running worker takes them back within a second
-- (webhooks.recover_lost_deliveries); rows stay here only while no worker runs.
CREATE OR REPLACE VIEW webhooks.stuck_deliveries AS
SELECT d.id                          AS delivery_id,
       d.endpoint_id,
       d.event_id,
       d.attempts,
       d.leased_by,
       d.lease_expires_at,
       now() - d.lease_expires_at    AS overdue
  FROM webhooks.deliveries d
 WHERE d.state = 'delivering'
   AND d.lease_expires_at < now();
