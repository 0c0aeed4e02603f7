-- Current definition of webhooks.visits_inserted, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- visit.created for every inserted visit (appointment, repeat, walk-in).
CREATE OR REPLACE FUNCTION webhooks.visits_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    WITH ev AS (
        INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot)
        SELECT webhooks.uuid_v7(), 'visit.created', n.clinic_id, 'visit:' || n.id,
               webhooks.visit_snapshot(n, s.name)
          FROM new_rows n
          LEFT JOIN clinic.visit_statuses s ON s.code = n.status
         WHERE EXISTS (SELECT FROM webhooks.subscribers(n.clinic_id, 'visit.created'))
         ORDER BY n.id
        RETURNING id, type, clinic_id, subject
    )
    INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject)
    SELECT ev.id, sub.endpoint_id, ev.subject
      FROM ev CROSS JOIN LATERAL webhooks.subscribers(ev.clinic_id, ev.type) AS sub (endpoint_id);
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM webhooks.wake_workers();
    END IF;
    RETURN NULL;
END
$$;
