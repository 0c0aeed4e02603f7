-- Current definition of webhooks.delivery_log, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- One row per HTTP call (and per attempt lost with its worker).
CREATE OR REPLACE VIEW webhooks.delivery_log AS
SELECT a.id               AS attempt_id,
       a.started_at       AS called_at,
       ev.clinic_id,
       c.code             AS clinic_code,
       a.endpoint_id,
       a.url,
       d.event_id,
       ev.type            AS event_type,
       d.id               AS delivery_id,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       d.state            AS delivery_state
FROM webhooks.attempts a
JOIN webhooks.deliveries d ON d.id = a.delivery_id
JOIN webhooks.events ev ON ev.id = d.event_id
LEFT JOIN clinic.clinics c ON c.id = ev.clinic_id;
