-- Current definition of webhooks.users_inserted, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- user.created: any role, any source.
CREATE OR REPLACE FUNCTION webhooks.users_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    WITH ev AS (
        INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot)
        SELECT webhooks.uuid_v7(), 'user.created', n.clinic_id, 'user:' || n.id,
               jsonb_build_object('id', n.id, 'role', n.role, 'source', n.source,
                                  'created_by', n.created_by)
          FROM new_rows n
         WHERE EXISTS (SELECT FROM webhooks.subscribers(n.clinic_id, 'user.created'))
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
