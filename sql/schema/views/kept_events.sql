-- Current definition of webhooks.kept_events, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Events kept past their day's partition because a delivery still pending
-- or delivering needs them (and any event no partition covered yet).
CREATE OR REPLACE VIEW webhooks.kept_events AS
SELECT ev.id                 AS event_id,
       ev.type               AS event_type,
       ev.clinic_id,
       ev.created_at,
       count(d.id)           AS live_deliveries,
       min(d.created_at)     AS oldest_live_delivery_at
  FROM webhooks.events_default ev
  LEFT JOIN webhooks.deliveries_live d ON d.event_id = ev.id
 GROUP BY ev.id;
