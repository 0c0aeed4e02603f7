-- The app's transaction writes one row per event; the worker fans events out
-- into deliveries, many at a time.
--
-- Until now each trigger also inserted one delivery per subscribed endpoint.
-- A single-row app transaction then paid for a second table with seven
-- indexes and two CHECKs, and per statement, not per row: with 4 clients its
-- rate fell to 0.38 of the no-trigger rate, against 0.58 when only the event
-- was written (pgbench, BENCHMARKS.md, fourth session).
--
-- What stays the same: the event and the endpoints it goes to are fixed in
-- the app's transaction (no commit, no webhook; a commit, always its
-- webhooks, to the endpoints subscribed at that commit); deliveries of one
-- subject are created in commit order, so lanes keep their order.
--
-- How the worker finds what to fan out, exactly once: each event records the
-- id of the transaction that wrote it (txid); webhooks.fan_out_position
-- keeps the snapshot up to which events are fanned out. A fan-out takes every
-- event whose transaction is visible in the current snapshot but not in that
-- one (so it committed in between), in the order the events were written
-- (seq), then stores the current snapshot. It runs in the worker's claim
-- transaction, so the deliveries and the new position commit together.
-- (The snapshot technique is PgQ's.)
--
-- Advisory lock key (1128812, -1): one fan-out at a time, across processes.

-- Events written before this migration had their deliveries made by the
-- old triggers: endpoint_ids NULL means "fanned out already".
ALTER TABLE webhooks.events
    ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN txid xid8 NOT NULL DEFAULT '1',
    ADD COLUMN endpoint_ids bigint[];
ALTER TABLE webhooks.events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();

COMMENT ON COLUMN webhooks.events.seq IS
    'Write order: events of one subject are fanned out (and so delivered) in this order.';
COMMENT ON COLUMN webhooks.events.txid IS
    'The writing transaction; webhooks.fan_out_position says whether it is fanned out.';
COMMENT ON COLUMN webhooks.events.endpoint_ids IS
    'The endpoints subscribed when the event was written; NULL for events fanned out by the pre-0.11 triggers.';

-- The fan-out's range scan: transactions since the last fanned-out snapshot.
CREATE INDEX events_by_txid ON webhooks.events (txid);

CREATE TABLE webhooks.fan_out_position (
    singleton      boolean PRIMARY KEY DEFAULT true CONSTRAINT fan_out_position_one_row CHECK (singleton),
    -- Every event of a transaction visible in this snapshot is fanned out.
    done           pg_snapshot NOT NULL,
    fanned_out_at  timestamptz NOT NULL DEFAULT now()
);
-- Everything committed so far came with its deliveries (old triggers).
INSERT INTO webhooks.fan_out_position (done) VALUES (pg_current_snapshot());

-- Fans out every event committed since the last fan-out: one delivery per
-- endpoint recorded in the event that still exists (a deleted endpoint gets
-- nothing; a disabled one gets its deliveries, held until it is enabled, as
-- before). Returns the number of deliveries created, or NULL when another
-- transaction is fanning out right now (it will take these events).
CREATE FUNCTION webhooks.fan_out_events() RETURNS integer
LANGUAGE plpgsql
-- Its estimates are poor (a snapshot range, arrays of endpoints) and large
-- enough to make PostgreSQL compile it with JIT: 0.4 s for a 20,000-event
-- fan-out that takes 0.25 s to run.
SET jit = off
AS $$
DECLARE
    done_before pg_snapshot;
    created integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1128812, -1) THEN
        RETURN NULL;
    END IF;
    -- A statement after the lock: it sees the position the last fan-out
    -- committed.
    SELECT p.done INTO done_before FROM webhooks.fan_out_position p;
    -- One statement, so pg_current_snapshot() is the snapshot it reads the
    -- events with.
    WITH committed_since AS (
        SELECT ev.id, ev.seq, ev.subject, ev.created_at, ev.endpoint_ids
          FROM webhooks.events ev
         WHERE ev.txid >= pg_snapshot_xmin(done_before)
           AND ev.txid < pg_snapshot_xmax(pg_current_snapshot())
           AND NOT pg_visible_in_snapshot(ev.txid, done_before)
           AND pg_visible_in_snapshot(ev.txid, pg_current_snapshot())
           AND ev.endpoint_ids IS NOT NULL
    ),
    fanned_out AS (
        INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject, created_at)
        SELECT c.id, target.endpoint_id, c.subject, c.created_at
          FROM committed_since c
         CROSS JOIN LATERAL unnest(c.endpoint_ids) AS target (endpoint_id)
         WHERE EXISTS (SELECT FROM webhooks.endpoints e WHERE e.id = target.endpoint_id)
         ORDER BY c.seq, target.endpoint_id
        RETURNING 1
    ),
    moved AS (
        -- Only when there was something: an idle look writes nothing.
        UPDATE webhooks.fan_out_position
           SET done = pg_current_snapshot(),
               fanned_out_at = now()
         WHERE EXISTS (SELECT FROM committed_since)
    )
    SELECT count(*) INTO created FROM fanned_out;
    IF created > 0 THEN
        -- Wake the other worker processes: they may have looked while
        -- these deliveries did not exist yet.
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
    RETURN created;
END
$$;

-- Events written but not fanned out yet (the worker is stopped or behind).
CREATE VIEW webhooks.fan_out_backlog AS
SELECT count(*)                 AS events,
       min(ev.created_at)       AS oldest_created_at,
       now() - min(ev.created_at) AS oldest_age
  FROM webhooks.fan_out_position p
  JOIN webhooks.events ev
    ON ev.txid >= pg_snapshot_xmin(p.done)
 WHERE NOT pg_visible_in_snapshot(ev.txid, p.done)
   AND ev.endpoint_ids IS NOT NULL;

COMMENT ON VIEW webhooks.fan_out_backlog IS
    'Events committed but not yet turned into deliveries by a worker, and the age of the oldest.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_reader') THEN
        GRANT SELECT ON webhooks.fan_out_backlog TO clinic_webhooks_reader;
    END IF;
END
$$;

-- The claim fans out first, in the same transaction, so a worker that wakes
-- up for a commit claims its deliveries in the same round trip. The claim
-- itself is unchanged; it keeps its body under a new name.
ALTER FUNCTION webhooks.claim_deliveries(integer, text, double precision)
    RENAME TO claim_due_deliveries;

CREATE FUNCTION webhooks.claim_deliveries(p_limit integer, p_worker text,
                                          p_lease_seconds double precision)
RETURNS TABLE (delivery_id bigint, attempt integer, schedule_position integer,
               event_id uuid, event_type text, created bigint, clinic_code text,
               snapshot text, endpoint_id bigint, url text, version text, secret text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.fan_out_events();
    RETURN QUERY SELECT * FROM webhooks.claim_due_deliveries(p_limit, p_worker, p_lease_seconds);
END
$$;

-- Each trigger now runs one INSERT into webhooks.events: the changed rows
-- that some endpoint subscribed to, each with the array of those endpoints
-- (a LATERAL subquery over the inlined webhooks.subscribers()).

CREATE OR REPLACE FUNCTION webhooks.users_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot, endpoint_ids)
    SELECT webhooks.uuid_v7(), 'user.created', n.clinic_id, 'user:' || n.id,
           jsonb_build_object('id', n.id, 'role', n.role, 'source', n.source,
                              'created_by', n.created_by),
           sub.ids
      FROM new_rows n
     CROSS JOIN LATERAL (SELECT array_agg(s ORDER BY s) AS ids
                           FROM webhooks.subscribers(n.clinic_id, 'user.created') s) sub
     WHERE sub.ids IS NOT NULL
     ORDER BY n.id;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM webhooks.wake_workers();
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.visits_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot, endpoint_ids)
    SELECT webhooks.uuid_v7(), 'visit.created', n.clinic_id, 'visit:' || n.id,
           webhooks.visit_snapshot(n, s.name), sub.ids
      FROM new_rows n
      LEFT JOIN clinic.visit_statuses s ON s.code = n.status
     CROSS JOIN LATERAL (SELECT array_agg(e ORDER BY e) AS ids
                           FROM webhooks.subscribers(n.clinic_id, 'visit.created') e) sub
     WHERE sub.ids IS NOT NULL
     ORDER BY n.id;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM webhooks.wake_workers();
    END IF;
    RETURN NULL;
END
$$;

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
    )
    INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot, endpoint_ids)
    SELECT webhooks.uuid_v7(), c.type, c.clinic_id, 'visit:' || c.id, c.snapshot, sub.ids
      FROM changed c
     CROSS JOIN LATERAL (SELECT array_agg(e ORDER BY e) AS ids
                           FROM webhooks.subscribers(c.clinic_id, c.type) e) sub
     WHERE sub.ids IS NOT NULL
     ORDER BY c.id;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM webhooks.wake_workers();
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.enqueue_signed_notes(note_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot, endpoint_ids)
    SELECT webhooks.uuid_v7(), 'visit.note.signed_and_sent', v.clinic_id, 'visit:' || v.id,
           webhooks.visit_snapshot(v, s.name)
           || jsonb_build_object('note', jsonb_build_object('id', n.id, 'status', n.status)),
           sub.ids
      FROM clinic.visit_notes n
      JOIN clinic.visits v ON v.id = n.visit_id
      LEFT JOIN clinic.visit_statuses s ON s.code = v.status
     CROSS JOIN LATERAL (SELECT array_agg(e ORDER BY e) AS ids
                           FROM webhooks.subscribers(v.clinic_id, 'visit.note.signed_and_sent') e) sub
     WHERE n.id = ANY (note_ids)
       AND sub.ids IS NOT NULL
     ORDER BY n.id;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM webhooks.wake_workers();
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.enqueue_processed_invoices(invoice_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot, endpoint_ids)
    SELECT webhooks.uuid_v7(), 'visit.invoice.processed', v.clinic_id, 'visit:' || v.id,
           webhooks.visit_snapshot(v, s.name)
           || jsonb_build_object('invoice', jsonb_build_object(
                  'id', i.id, 'status', i.status, 'amount_due', i.amount_due,
                  'amount_paid', i.amount_paid, 'currency', i.currency)),
           sub.ids
      FROM clinic.invoices i
      JOIN clinic.visits v ON v.id = i.visit_id
      LEFT JOIN clinic.visit_statuses s ON s.code = v.status
     CROSS JOIN LATERAL (SELECT array_agg(e ORDER BY e) AS ids
                           FROM webhooks.subscribers(v.clinic_id, 'visit.invoice.processed') e) sub
     WHERE i.id = ANY (invoice_ids)
       AND sub.ids IS NOT NULL
     ORDER BY i.id;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM webhooks.wake_workers();
    END IF;
END
$$;

-- An event not fanned out yet has no deliveries to send again: say so
-- instead of silently doing nothing; the worker will send it anyway.
CREATE OR REPLACE FUNCTION webhooks.redeliver_event(p_event_id uuid, p_endpoint_id bigint DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    ev webhooks.events;
    ep_clinic bigint;
    delivery bigint;
BEGIN
    SELECT * INTO ev FROM webhooks.events WHERE id = p_event_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no event with id %', p_event_id USING ERRCODE = 'no_data_found';
    END IF;
    IF ev.endpoint_ids IS NOT NULL
       AND NOT pg_visible_in_snapshot(ev.txid, (SELECT done FROM webhooks.fan_out_position))
       AND (p_endpoint_id IS NULL OR p_endpoint_id = ANY (ev.endpoint_ids)) THEN
        RAISE NOTICE 'event % is not fanned out yet; the worker will send it to its endpoints', p_event_id;
        RETURN;
    END IF;
    IF p_endpoint_id IS NULL THEN
        FOR delivery IN
            SELECT id FROM webhooks.deliveries WHERE event_id = p_event_id ORDER BY id
        LOOP
            RETURN QUERY SELECT r FROM webhooks.redeliver(delivery) AS r WHERE r IS NOT NULL;
        END LOOP;
        RETURN;
    END IF;
    SELECT clinic_id INTO ep_clinic FROM webhooks.endpoints WHERE id = p_endpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no endpoint with id %', p_endpoint_id USING ERRCODE = 'no_data_found';
    END IF;
    IF ep_clinic <> ev.clinic_id THEN
        -- Never send one clinic's data to another clinic's URL.
        RAISE EXCEPTION 'endpoint % belongs to clinic %, event % to clinic %',
            p_endpoint_id, ep_clinic, p_event_id, ev.clinic_id USING ERRCODE = 'check_violation';
    END IF;
    SELECT id INTO delivery FROM webhooks.deliveries
     WHERE event_id = p_event_id AND endpoint_id = p_endpoint_id
     ORDER BY id LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT r FROM webhooks.redeliver(delivery) AS r WHERE r IS NOT NULL;
        RETURN;
    END IF;
    INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject)
    VALUES (p_event_id, p_endpoint_id, ev.subject)
    RETURNING id INTO delivery;
    PERFORM pg_notify('clinic_webhooks', '');
    RETURN NEXT delivery;
END
$$;
