-- Current definition of webhooks.delivery_log, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- One row per HTTP call (and per attempt lost with its worker). The clinic
-- comes from the endpoint, the event from the call itself, so a call stays
-- listed after retention dropped its delivery and event (its delivery_state
-- is NULL then). test: a call of webhooks.send_test.
CREATE OR REPLACE VIEW webhooks.delivery_log AS
SELECT a.id                             AS attempt_id,
       a.started_at                     AS called_at,
       ep.clinic_id,
       c.code                           AS clinic_code,
       a.endpoint_id,
       a.url,
       a.event_id,
       a.event_type,
       a.delivery_id,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       d.state                          AS delivery_state,
       a.test
FROM webhooks.attempts a
JOIN webhooks.endpoints ep ON ep.id = a.endpoint_id
LEFT JOIN webhooks.deliveries d ON d.id = a.delivery_id
LEFT JOIN clinic.clinics c ON c.id = ep.clinic_id;
