-- Current definition of webhooks.enqueue_processed_invoices, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- visit.invoice.processed for these invoices (as they are now). Same lane as
-- their visit.
CREATE OR REPLACE FUNCTION webhooks.enqueue_processed_invoices(invoice_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    WITH ev AS (
        INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot)
        SELECT webhooks.uuid_v7(), 'visit.invoice.processed', v.clinic_id, 'visit:' || v.id,
               webhooks.visit_snapshot(v, s.name)
               || jsonb_build_object('invoice', jsonb_build_object(
                      'id', i.id, 'status', i.status, 'amount_due', i.amount_due,
                      'amount_paid', i.amount_paid, 'currency', i.currency))
          FROM clinic.invoices i
          JOIN clinic.visits v ON v.id = i.visit_id
          LEFT JOIN clinic.visit_statuses s ON s.code = v.status
         WHERE i.id = ANY (invoice_ids)
           AND EXISTS (SELECT FROM webhooks.subscribers(v.clinic_id, 'visit.invoice.processed'))
         ORDER BY i.id
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
