-- Triggers that turn the main app's writes into events and deliveries, in the
-- writing transaction: no commit, no webhook; a commit, always its webhooks.
--
-- They are statement-level with transition tables, so a bulk INSERT of 20,000
-- visits costs two set-based INSERTs, not 20,000 function calls, and each one
-- does the minimum in one statement: snapshot the changed rows that some
-- endpoint subscribed to, record them as events, add one delivery per
-- subscribed endpoint, and wake the workers. A change nobody subscribed to
-- writes nothing. Rendering v1/v2 happens later, in the worker.
--
-- Advisory lock keys (1128812, n): n = 0 is the notifier slot (below);
-- n > 0 is one claimer per endpoint (webhooks.claim_deliveries, in the
-- *_webhooks_queue_functions migration).

-- Whole seconds since the epoch, as the payloads carry them. STABLE, like
-- extract() on timestamptz: a function declared stricter than its body is
-- never inlined, and would be planned again in every trigger statement.
CREATE FUNCTION webhooks.unix_seconds(t timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT floor(extract(epoch FROM t))::bigint
$$;

-- The visit part of every visit.* payload, version-neutral: ids as numbers,
-- times as unix seconds, the status as both code and name (as of the change).
CREATE FUNCTION webhooks.visit_snapshot(v clinic.visits, status_name text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'id', v.id,
        'member_id', v.member_id,
        'provider_id', v.provider_id,
        'start', webhooks.unix_seconds(v.start_at),
        'end', webhooks.unix_seconds(v.end_at),
        'actual_start', webhooks.unix_seconds(v.actual_start),
        'actual_end', webhooks.unix_seconds(v.actual_end),
        'status', v.status,
        'status_name', status_name,
        'status_updated_by', v.status_updated_by)
$$;

-- The enabled endpoints of a clinic subscribed to an event type. A plain
-- SQL function, so the planner inlines it into the triggers' statements.
CREATE FUNCTION webhooks.subscribers(p_clinic_id bigint, p_type text) RETURNS SETOF bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT e.id
      FROM webhooks.endpoints e
     WHERE e.clinic_id = p_clinic_id
       AND e.enabled
       AND (e.event_types IS NULL OR p_type = ANY (e.event_types))
$$;

-- NOTIFY makes PostgreSQL serialize the commits of notifying transactions (a
-- lock held through the WAL flush), which would cost the app its group
-- commit. So only one transaction at a time notifies: the one holding this
-- lock. The others commit freely; the worker's claim after each wake-up, a
-- second look 10 ms after any claim that found work, and its poll interval
-- pick their events up.
CREATE FUNCTION webhooks.wake_workers() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(1128812, 0) THEN
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
END
$$;

-- Each trigger below runs one statement of this shape:
--   WITH ev AS (INSERT INTO webhooks.events ... SELECT <changed rows that
--               some endpoint subscribed to> RETURNING ...)
--   INSERT INTO webhooks.deliveries ... FROM ev × webhooks.subscribers(...)
-- and wakes the workers when it queued anything.

-- user.created: any role, any source.
CREATE FUNCTION webhooks.users_inserted() RETURNS trigger
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

-- visit.created for every inserted visit (appointment, repeat, walk-in).
CREATE FUNCTION webhooks.visits_inserted() RETURNS trigger
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

-- visit.ended when the status enters a terminal state; otherwise
-- visit.updated, but only when a payload field changed.
CREATE FUNCTION webhooks.visits_updated() RETURNS trigger
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

-- visit.note.signed_and_sent for these notes (as they are now, in the
-- writing transaction). Same lane as their visit.
CREATE FUNCTION webhooks.enqueue_signed_notes(note_ids bigint[]) RETURNS void
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

-- A note's status becomes 'signed': inserted signed, or changed to signed.
CREATE FUNCTION webhooks.visit_notes_signed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Each branch is planned only when it runs: an INSERT has no old_rows.
    IF TG_OP = 'INSERT' THEN
        PERFORM webhooks.enqueue_signed_notes(ARRAY(
            SELECT n.id FROM new_rows n WHERE n.status = 'signed'));
    ELSE
        PERFORM webhooks.enqueue_signed_notes(ARRAY(
            SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status = 'signed' AND o.status IS DISTINCT FROM 'signed'));
    END IF;
    RETURN NULL;
END
$$;

-- visit.invoice.processed for these invoices (as they are now). Same lane as
-- their visit.
CREATE FUNCTION webhooks.enqueue_processed_invoices(invoice_ids bigint[]) RETURNS void
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

-- An invoice is inserted, or a payload field (status, amounts, currency) changes.
CREATE FUNCTION webhooks.invoices_processed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM webhooks.enqueue_processed_invoices(ARRAY(SELECT i.id FROM new_rows i));
    ELSE
        PERFORM webhooks.enqueue_processed_invoices(ARRAY(
            SELECT i.id FROM new_rows i JOIN old_rows o ON o.id = i.id
             WHERE (i.status, i.amount_due, i.amount_paid, i.currency)
                   IS DISTINCT FROM (o.status, o.amount_due, o.amount_paid, o.currency)));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_webhooks_insert AFTER INSERT ON clinic.users
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.users_inserted();

CREATE TRIGGER visits_webhooks_insert AFTER INSERT ON clinic.visits
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.visits_inserted();
CREATE TRIGGER visits_webhooks_update AFTER UPDATE ON clinic.visits
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.visits_updated();

CREATE TRIGGER visit_notes_webhooks_insert AFTER INSERT ON clinic.visit_notes
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.visit_notes_signed();
CREATE TRIGGER visit_notes_webhooks_update AFTER UPDATE ON clinic.visit_notes
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.visit_notes_signed();

CREATE TRIGGER invoices_webhooks_insert AFTER INSERT ON clinic.invoices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.invoices_processed();
CREATE TRIGGER invoices_webhooks_update AFTER UPDATE ON clinic.invoices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.invoices_processed();
