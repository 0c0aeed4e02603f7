-- Current definition of webhooks.visits_updated, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- visit.ended when the status enters a terminal state; otherwise
-- visit.updated, but only when a payload field changed.
CREATE OR REPLACE FUNCTION webhooks.visits_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    WITH changed AS (
        SELECT n.id, n.clinic_id, webhooks.visit_snapshot(n, s.name) AS snapshot,
               CASE WHEN n.status IS DISTINCT FROM o.status AND s.terminal
                    THEN 'visit.ended' ELSE 'visit.updated' END AS type
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
          LEFT JOIN clinic.visit_statuses s ON s.code = n.status
         WHERE (n.member_id, n.provider_id,
                webhooks.unix_seconds(n.start_at), webhooks.unix_seconds(n.end_at),
                webhooks.unix_seconds(n.actual_start), webhooks.unix_seconds(n.actual_end),
                n.status, n.status_updated_by)
               IS DISTINCT FROM
               (o.member_id, o.provider_id,
                webhooks.unix_seconds(o.start_at), webhooks.unix_seconds(o.end_at),
                webhooks.unix_seconds(o.actual_start), webhooks.unix_seconds(o.actual_end),
                o.status, o.status_updated_by)
    ),
    ev AS (
        INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot)
        SELECT webhooks.uuid_v7(), c.type, c.clinic_id, 'visit:' || c.id, c.snapshot
          FROM changed c
         WHERE EXISTS (SELECT FROM webhooks.subscribers(c.clinic_id, c.type))
         ORDER BY c.id
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
