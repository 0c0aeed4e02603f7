-- Current definition of webhooks.run_maintenance, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Partition maintenance and retention of the three histories (the notes
-- are at the top of the body, so that \sf shows them).
CREATE OR REPLACE FUNCTION webhooks.run_maintenance(p_keep interval DEFAULT '30 days',
                                                    p_partition interval DEFAULT '1 day',
                                                    p_ahead integer DEFAULT 7,
                                                    p_now timestamptz DEFAULT now())
RETURNS jsonb
LANGUAGE plpgsql
-- Partition bounds are days of UTC whatever the caller's time zone.
SET TimeZone = 'UTC'
-- Partitions are made and dropped by their owner only: this runs as the
-- owner, with a search path nobody else can write to (EXECUTE is granted to
-- clinic_webhooks_worker only).
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
-- Run by one caller at a time (a transaction-level advisory lock; another
-- caller returns at once with ran = false), by the worker on a schedule
-- (`retention.*` in config.toml) or by a DBA, from pg_cron say:
--   SELECT webhooks.run_maintenance('30 days');
-- For each history (attempts by call time; finished deliveries and events
-- by event time) it creates the partitions of the next p_ahead periods of
-- p_partition, and drops every partition wholly older than p_keep: a
-- dropped partition leaves no dead rows and needs no VACUUM. Before an
-- events partition goes, the events of deliveries still pending or
-- delivering are copied into events_default (webhooks.kept_events): the
-- queue (deliveries_live) is never dropped, and keeps what it needs to
-- render and send. p_now stands for the current time (for tests, and for a
-- DBA planning a change). Returns what it did.
DECLARE
    cutoff timestamptz := p_now - p_keep;
    cutoff_id uuid := webhooks.uuid_v7_bound(p_now - p_keep);
    horizon timestamptz := p_now + p_ahead * p_partition;
    created text[] := '{}';
    dropped text[] := '{}';
    dropped_rows jsonb := '{}';
    in_default jsonb := '{}';
    expired_in_default jsonb := '{}';
    kept bigint := 0;
    n bigint;
    h record;
    part record;
    range_start timestamptz;
    range_end timestamptz;
    lo text;
    hi text;
    name text;
BEGIN
    IF p_keep <= interval '0' OR p_partition < interval '1 hour' OR p_ahead < 1 THEN
        RAISE EXCEPTION 'run_maintenance needs keep > 0, partition >= 1 hour and ahead >= 1 (got %, %, %)',
                        p_keep, p_partition, p_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Acting as of another time, or planning far ahead, is the owner's
    -- (tests, a DBA planning a change); the worker's role may only run
    -- maintenance for now.
    IF (p_now NOT BETWEEN now() - interval '1 minute' AND now() + interval '1 minute'
        OR p_ahead * p_partition > interval '366 days')
       AND NOT pg_has_role(session_user, current_user, 'MEMBER') THEN
        RAISE EXCEPTION 'run_maintenance: only % may act as of another time or plan more than a year ahead',
                        current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT pg_try_advisory_xact_lock(1128814, 1) THEN
        RETURN jsonb_build_object('ran', false, 'reason', 'another maintenance run is in progress');
    END IF;
    -- Creating and dropping a partition briefly locks its table, and
    -- writers queue behind a lock that waits: wait for others no longer
    -- than this, and fail (the worker tries again soon) rather than hold up
    -- the application's writes.
    SET LOCAL lock_timeout = '1s';

    FOR h IN SELECT * FROM (VALUES
                ('attempts', 'attempts', 'attempts', 'started_at', false),
                ('deliveries', 'deliveries_done', 'deliveries', 'event_id', true),
                ('events', 'events', 'events', 'id', true))
             AS t (history, parent, target, key, by_event_time) LOOP
        -- Partitions ahead, from the end of the newest one (or the start of
        -- p_now's day) to p_ahead partitions past p_now. Rows that went to
        -- the default partition for want of one of them move into it.
        range_start := coalesce((SELECT max(p.range_end) FROM webhooks.history_partitions p
                                  WHERE p.history = h.history),
                                date_trunc('day', p_now));
        WHILE range_start < horizon LOOP
            range_end := range_start + p_partition;
            -- A period already past retention gets no partition (its rows,
            -- if any, stay in the default partition and expire from there).
            IF range_end > cutoff THEN
                name := h.parent || '_' || to_char(range_start AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MI');
                IF h.by_event_time THEN
                    lo := webhooks.uuid_v7_bound(range_start)::text;
                    hi := webhooks.uuid_v7_bound(range_end)::text;
                ELSE
                    lo := range_start::text;
                    hi := range_end::text;
                END IF;
                -- Creating the partition locks the default one anyway (it
                -- checks that no row there belongs to the new range); taken
                -- first, no row can arrive there between the move and the
                -- check. The move is one statement: what it deletes, it keeps.
                EXECUTE format('LOCK TABLE webhooks.%I IN ACCESS EXCLUSIVE MODE', h.parent || '_default');
                EXECUTE format('CREATE TEMP TABLE run_maintenance_moved (LIKE webhooks.%I) ON COMMIT DROP',
                               h.parent || '_default');
                EXECUTE format('WITH m AS (DELETE FROM webhooks.%I WHERE %I >= %L AND %I < %L RETURNING *)
                                INSERT INTO run_maintenance_moved SELECT * FROM m',
                               h.parent || '_default', h.key, lo, h.key, hi);
                GET DIAGNOSTICS n = ROW_COUNT;
                EXECUTE format('CREATE TABLE webhooks.%I PARTITION OF webhooks.%I FOR VALUES FROM (%L) TO (%L)',
                               name, h.parent, lo, hi);
                IF n > 0 THEN
                    EXECUTE format('INSERT INTO webhooks.%I OVERRIDING SYSTEM VALUE SELECT * FROM run_maintenance_moved',
                                   h.target);
                END IF;
                DROP TABLE run_maintenance_moved;
                created := created || name;
            END IF;
            range_start := range_end;
        END LOOP;

        -- Partitions wholly older than the retention period go at once.
        FOR part IN SELECT p.name, p.range_end, p.rows_estimate FROM webhooks.history_partitions p
                     WHERE p.history = h.history AND p.range_end <= cutoff
                     ORDER BY p.range_end LOOP
            -- Locked before anything is read from it: a delivery made for
            -- one of its events meanwhile (a redelivery) is either seen by
            -- the copy below or waits, and finds the event kept.
            EXECUTE format('LOCK TABLE webhooks.%I IN ACCESS EXCLUSIVE MODE', part.name);
            IF h.history = 'events' THEN
                EXECUTE format('CREATE TEMP TABLE run_maintenance_kept ON COMMIT DROP AS
                                SELECT ev.* FROM webhooks.%I ev
                                 WHERE ev.id IN (SELECT d.event_id FROM webhooks.deliveries_live d
                                                  WHERE d.event_id < %L)',
                               part.name, webhooks.uuid_v7_bound(part.range_end));
            END IF;
            EXECUTE format('DROP TABLE webhooks.%I', part.name);
            IF h.history = 'events' THEN
                INSERT INTO webhooks.events SELECT * FROM run_maintenance_kept;
                GET DIAGNOSTICS n = ROW_COUNT;
                kept := kept + n;
                DROP TABLE run_maintenance_kept;
            END IF;
            dropped := dropped || part.name;
            dropped_rows := jsonb_set(dropped_rows, ARRAY[h.history],
                to_jsonb(coalesce((dropped_rows ->> h.history)::bigint, 0) + part.rows_estimate));
        END LOOP;
    END LOOP;

    -- The default partitions only hold rows no partition was there for,
    -- and the events (and late-finished deliveries) kept for the queue.
    -- What of that is past retention and no longer needed goes row by row:
    -- there is little of it.
    DELETE FROM webhooks.attempts_default WHERE started_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    expired_in_default := expired_in_default || jsonb_build_object('attempts', n);
    DELETE FROM webhooks.deliveries_done_default WHERE event_id < cutoff_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    expired_in_default := expired_in_default || jsonb_build_object('deliveries', n);
    DELETE FROM webhooks.events_default ev
     WHERE ev.id < cutoff_id
       AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries_live d WHERE d.event_id = ev.id);
    GET DIAGNOSTICS n = ROW_COUNT;
    expired_in_default := expired_in_default || jsonb_build_object('events', n);

    in_default := jsonb_build_object(
        'attempts', (SELECT count(*) FROM webhooks.attempts_default),
        'deliveries', (SELECT count(*) FROM webhooks.deliveries_done_default
                        WHERE event_id >= cutoff_id),
        'events', (SELECT count(*) FROM webhooks.events_default WHERE id >= cutoff_id));
    IF (in_default ->> 'attempts')::bigint + (in_default ->> 'deliveries')::bigint
           + (in_default ->> 'events')::bigint > 0 THEN
        RAISE WARNING 'rows in the default partitions that no partition covered (they move into one when it is created): %',
                      in_default;
    END IF;
    RETURN jsonb_build_object(
        'ran', true,
        'keep', p_keep::text,
        'cutoff', cutoff,
        'created', to_jsonb(created),
        'dropped', to_jsonb(dropped),
        'dropped_rows_estimate', dropped_rows,
        'events_kept_for_live_deliveries', kept,
        'events_kept', (SELECT count(*) FROM webhooks.events_default WHERE id < cutoff_id),
        'expired_rows_deleted_from_default', expired_in_default,
        'rows_in_default', in_default);
END
$$;
