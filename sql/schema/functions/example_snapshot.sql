-- Current definition of webhooks.example_snapshot, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- An example snapshot of each event type, as the triggers would record it
-- (ids 0, times now): what a test send renders.
CREATE OR REPLACE FUNCTION webhooks.example_snapshot(p_type text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_type = 'user.created' THEN
            jsonb_build_object('id', 0, 'role', 'patient', 'source', 'signup', 'created_by', NULL)
        ELSE
            jsonb_build_object(
                'id', 0,
                'member_id', 0,
                'provider_id', 0,
                'start', webhooks.unix_seconds(now()),
                'end', webhooks.unix_seconds(now() + interval '15 minutes'),
                'actual_start', CASE WHEN p_type <> 'visit.created' THEN webhooks.unix_seconds(now()) END,
                'actual_end', CASE WHEN p_type IN ('visit.ended', 'visit.note.signed_and_sent',
                                                   'visit.invoice.processed')
                                   THEN webhooks.unix_seconds(now() + interval '15 minutes') END,
                'status', CASE p_type WHEN 'visit.created' THEN 10 WHEN 'visit.updated' THEN 30 ELSE 50 END,
                'status_name', CASE p_type WHEN 'visit.created' THEN 'new'
                                           WHEN 'visit.updated' THEN 'inprogress' ELSE 'completed' END,
                'status_updated_by', 0)
            || CASE p_type
                   WHEN 'visit.note.signed_and_sent' THEN
                       jsonb_build_object('note', jsonb_build_object('id', 0, 'status', 'signed'))
                   WHEN 'visit.invoice.processed' THEN
                       jsonb_build_object('invoice', jsonb_build_object(
                           'id', 0, 'status', 'paid', 'amount_due', 0, 'amount_paid', 4500,
                           'currency', 'USD'))
                   ELSE '{}'::jsonb
               END
    END
$$;
