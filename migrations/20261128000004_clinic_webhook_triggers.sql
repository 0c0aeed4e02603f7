-- Triggers that turn the main app's writes into events and deliveries, in the
-- writing transaction: no commit, no webhook; a commit, always its webhooks.
--
-- They are statement-level with transition tables, so a bulk INSERT of 20,000
-- visits costs two set-based INSERTs, not 20,000 function calls, and each one
-- does the minimum: snapshot the row, record the event, fan out to the
-- subscribed endpoints, NOTIFY the workers. Rendering v1/v2 happens later, in
-- the worker.

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

CREATE TYPE webhooks.event_draft AS (
    type      text,
    clinic_id bigint,
    subject   text,
    snapshot  jsonb
);

-- Records the events that at least one endpoint wants, and one pending
-- delivery per subscribed, enabled endpoint of the event's clinic; wakes the
-- workers if there is work. A change nobody subscribed to writes nothing.
-- Advisory lock keys (1128812, n): n = 0 the notifier slot; n > 0 (claim
-- query) one claimer per endpoint.
CREATE FUNCTION webhooks.enqueue(drafts webhooks.event_draft[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    IF cardinality(drafts) = 0 THEN
        RETURN 0;
    END IF;
    WITH draft AS MATERIALIZED (
        SELECT gen_random_uuid() AS id, d.type, d.clinic_id, d.subject, d.snapshot, d.n
        FROM unnest(drafts) WITH ORDINALITY AS d (type, clinic_id, subject, snapshot, n)
    ),
    target AS MATERIALIZED (
        SELECT d.id AS event_id, d.subject, d.n, e.id AS endpoint_id
        FROM draft d
        JOIN webhooks.endpoints e
          ON e.clinic_id = d.clinic_id
         AND e.enabled
         AND (e.event_types IS NULL OR d.type = ANY (e.event_types))
    ),
    recorded AS (
        INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot)
        SELECT d.id, d.type, d.clinic_id, d.subject, d.snapshot
        FROM draft d
        WHERE d.id IN (SELECT t.event_id FROM target t)
    )
    INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject)
    SELECT t.event_id, t.endpoint_id, t.subject
    FROM target t
    ORDER BY t.n, t.endpoint_id;
    GET DIAGNOSTICS queued = ROW_COUNT;
    -- NOTIFY makes PostgreSQL serialize the commits of notifying transactions
    -- (a lock held through the WAL flush), which would cost the app its group
    -- commit. So only one transaction at a time notifies: the one holding
    -- this lock. The others commit freely; the worker's claim after each
    -- wake-up, a quick second look, and its poll interval pick them up.
    IF queued > 0 AND pg_try_advisory_xact_lock(1128812, 0) THEN
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
    RETURN queued;
END
$$;

-- user.created: any role, any source.
CREATE FUNCTION webhooks.users_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.enqueue(ARRAY(
        SELECT ROW('user.created', n.clinic_id, 'user:' || n.id,
                   jsonb_build_object('id', n.id, 'role', n.role, 'source', n.source,
                                      'created_by', n.created_by))::webhooks.event_draft
        FROM new_rows n));
    RETURN NULL;
END
$$;

-- visit.created for every inserted visit (appointment, repeat, walk-in).
CREATE FUNCTION webhooks.visits_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.enqueue(ARRAY(
        SELECT ROW('visit.created', n.clinic_id, 'visit:' || n.id,
                   webhooks.visit_snapshot(n, s.name))::webhooks.event_draft
        FROM new_rows n
        LEFT JOIN clinic.visit_statuses s ON s.code = n.status));
    RETURN NULL;
END
$$;

-- visit.ended when the status enters a terminal state; otherwise
-- visit.updated, but only when a payload field changed.
CREATE FUNCTION webhooks.visits_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.enqueue(ARRAY(
        SELECT ROW(CASE WHEN n.status IS DISTINCT FROM o.status AND s.terminal
                        THEN 'visit.ended' ELSE 'visit.updated' END,
                   n.clinic_id, 'visit:' || n.id,
                   webhooks.visit_snapshot(n, s.name))::webhooks.event_draft
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
        ORDER BY n.id));
    RETURN NULL;
END
$$;

-- visit.note.signed_and_sent when a note's status becomes 'signed'
-- (inserted signed, or changed to signed). Same lane as its visit.
CREATE FUNCTION webhooks.visit_notes_signed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM webhooks.enqueue(ARRAY(
            SELECT ROW('visit.note.signed_and_sent', v.clinic_id, 'visit:' || v.id,
                       webhooks.visit_snapshot(v, s.name)
                       || jsonb_build_object('note', jsonb_build_object('id', n.id, 'status', n.status))
                   )::webhooks.event_draft
            FROM new_rows n
            JOIN clinic.visits v ON v.id = n.visit_id
            LEFT JOIN clinic.visit_statuses s ON s.code = v.status
            WHERE n.status = 'signed'
            ORDER BY n.id));
    ELSE
        PERFORM webhooks.enqueue(ARRAY(
            SELECT ROW('visit.note.signed_and_sent', v.clinic_id, 'visit:' || v.id,
                       webhooks.visit_snapshot(v, s.name)
                       || jsonb_build_object('note', jsonb_build_object('id', n.id, 'status', n.status))
                   )::webhooks.event_draft
            FROM new_rows n
            JOIN old_rows o ON o.id = n.id
            JOIN clinic.visits v ON v.id = n.visit_id
            LEFT JOIN clinic.visit_statuses s ON s.code = v.status
            WHERE n.status = 'signed' AND o.status IS DISTINCT FROM 'signed'
            ORDER BY n.id));
    END IF;
    RETURN NULL;
END
$$;

-- visit.invoice.processed when an invoice is inserted or a payload field
-- (status, amounts, currency) changes. Same lane as its visit.
CREATE FUNCTION webhooks.invoices_processed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM webhooks.enqueue(ARRAY(
            SELECT ROW('visit.invoice.processed', v.clinic_id, 'visit:' || v.id,
                       webhooks.visit_snapshot(v, s.name)
                       || jsonb_build_object('invoice', jsonb_build_object(
                              'id', i.id, 'status', i.status, 'amount_due', i.amount_due,
                              'amount_paid', i.amount_paid, 'currency', i.currency))
                   )::webhooks.event_draft
            FROM new_rows i
            JOIN clinic.visits v ON v.id = i.visit_id
            LEFT JOIN clinic.visit_statuses s ON s.code = v.status
            ORDER BY i.id));
    ELSE
        PERFORM webhooks.enqueue(ARRAY(
            SELECT ROW('visit.invoice.processed', v.clinic_id, 'visit:' || v.id,
                       webhooks.visit_snapshot(v, s.name)
                       || jsonb_build_object('invoice', jsonb_build_object(
                              'id', i.id, 'status', i.status, 'amount_due', i.amount_due,
                              'amount_paid', i.amount_paid, 'currency', i.currency))
                   )::webhooks.event_draft
            FROM new_rows i
            JOIN old_rows o ON o.id = i.id
            JOIN clinic.visits v ON v.id = i.visit_id
            LEFT JOIN clinic.visit_statuses s ON s.code = v.status
            WHERE (i.status, i.amount_due, i.amount_paid, i.currency)
                  IS DISTINCT FROM (o.status, o.amount_due, o.amount_paid, o.currency)
            ORDER BY i.id));
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
