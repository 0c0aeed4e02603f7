-- Current definition of webhooks.enqueue_signed_notes, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- visit.note.signed_and_sent for these notes (as they are now, in the
-- writing transaction). Same lane as their visit.
CREATE OR REPLACE FUNCTION webhooks.enqueue_signed_notes(note_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    WITH ev AS (
        INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot)
        SELECT webhooks.uuid_v7(), 'visit.note.signed_and_sent', v.clinic_id, 'visit:' || v.id,
               webhooks.visit_snapshot(v, s.name)
               || jsonb_build_object('note', jsonb_build_object('id', n.id, 'status', n.status))
          FROM clinic.visit_notes n
          JOIN clinic.visits v ON v.id = n.visit_id
          LEFT JOIN clinic.visit_statuses s ON s.code = v.status
         WHERE n.id = ANY (note_ids)
           AND EXISTS (SELECT FROM webhooks.subscribers(v.clinic_id, 'visit.note.signed_and_sent'))
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
END
$$;
