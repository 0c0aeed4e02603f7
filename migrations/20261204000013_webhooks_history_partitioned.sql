-- Finished deliveries and their events in time partitions, like the attempt
-- log, so that retention drops whole partitions of all three.
--
--   webhooks.deliveries          partitioned by LIST (state):
--     deliveries_live            pending and delivering: the queue. Every
--                                queue index (due work, lanes, bulkheads,
--                                leases) lives on this partition only, so
--                                the queue stays as small as the work that
--                                waits, whatever the history holds.
--     deliveries_done            succeeded and failed, partitioned by RANGE
--                                (event_id): event ids are version 7 UUIDs,
--                                which begin with their creation time, so a
--                                finished delivery sits in the partition of
--                                its event's day and is dropped with it.
--       deliveries_done_<day>, deliveries_done_legacy, deliveries_done_default
--   webhooks.events              partitioned by RANGE (id), by day.
--       events_<day>, events_legacy, events_default
--
-- A delivery moves between deliveries_live and deliveries_done as its state
-- changes (an UPDATE that PostgreSQL carries out as a move). Retention never
-- drops deliveries_live: a delivery still pending or delivering stays
-- whatever its age, and so does its event: before an events partition is
-- dropped, the events that live deliveries need are copied into
-- events_default (webhooks.kept_events lists them). A delivery that
-- finishes after its event's day was dropped lands in
-- deliveries_done_default, and maintenance deletes it (and its event) once
-- it is past the retention period.
--
-- The *_legacy partitions hold what the tables held before this migration
-- (if anything), attached as they are, up to the end of the day the
-- migration ran. The primary key of deliveries becomes (id, state,
-- event_id): a key of a partitioned table must hold its partition keys. Ids
-- still come from one sequence.

-- The smallest version 7 UUID of a time: the partition bounds of event ids.
CREATE FUNCTION webhooks.uuid_v7_bound(p_at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(substring(int8send(floor(extract(epoch FROM p_at) * 1000)::bigint) FROM 3)
                      || '\x00000000000000000000'::bytea,
                  'hex')::uuid
$$;

-- The time a version 7 UUID begins with (to millisecond precision).
CREATE FUNCTION webhooks.uuid_v7_time(p_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_timestamp(('x' || lpad(substr(replace(p_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint
                        / 1000.0)
$$;

-- A version 7 UUID for a given time: for importing history and for tests.
CREATE FUNCTION webhooks.uuid_v7_at(p_at timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM p_at) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- Events ---------------------------------------------------------------

ALTER TABLE webhooks.events RENAME TO events_legacy;
ALTER TABLE webhooks.events_legacy RENAME CONSTRAINT events_pkey TO events_legacy_pkey;

CREATE TABLE webhooks.events (
    LIKE webhooks.events_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);
CREATE TABLE webhooks.events_default PARTITION OF webhooks.events DEFAULT;

-- Deliveries -----------------------------------------------------------

ALTER TABLE webhooks.deliveries RENAME TO deliveries_legacy;
ALTER TABLE webhooks.deliveries_legacy DROP CONSTRAINT deliveries_pkey;
ALTER TABLE webhooks.deliveries_legacy ALTER COLUMN id DROP IDENTITY;
DROP INDEX webhooks.deliveries_first_attempts_due, webhooks.deliveries_retries_due,
           webhooks.deliveries_unfinished_by_lane, webhooks.deliveries_delivering_by_endpoint;
-- Kept, and taken over by the partitioned indexes of the same definition.
ALTER INDEX webhooks.deliveries_by_event RENAME TO deliveries_legacy_by_event;
ALTER INDEX webhooks.deliveries_failed_by_endpoint RENAME TO deliveries_legacy_failed_by_endpoint;

CREATE TABLE webhooks.deliveries (
    LIKE webhooks.deliveries_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (id, state, event_id)
) PARTITION BY LIST (state);
ALTER TABLE webhooks.deliveries ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('webhooks.deliveries', 'id'),
              coalesce((SELECT max(id) FROM webhooks.deliveries_legacy), 0) + 1, false);
CREATE INDEX deliveries_by_event ON webhooks.deliveries (event_id);

CREATE TABLE webhooks.deliveries_live PARTITION OF webhooks.deliveries
    FOR VALUES IN ('pending', 'delivering');
CREATE TABLE webhooks.deliveries_done PARTITION OF webhooks.deliveries
    FOR VALUES IN ('succeeded', 'failed') PARTITION BY RANGE (event_id);
CREATE TABLE webhooks.deliveries_done_default PARTITION OF webhooks.deliveries_done DEFAULT;

-- The queue's indexes, on the queue only.
-- Claim: due deliveries of one endpoint, oldest due first; first attempts
-- and retries apart, so that retries cannot starve first attempts.
CREATE INDEX deliveries_first_attempts_due
    ON webhooks.deliveries_live (endpoint_id, next_attempt_at, id)
    WHERE state = 'pending' AND attempts = retry_base;
CREATE INDEX deliveries_retries_due
    ON webhooks.deliveries_live (endpoint_id, next_attempt_at, id)
    WHERE state = 'pending' AND attempts > retry_base;
-- Lanes: is there an earlier unfinished delivery of this subject for this endpoint?
CREATE INDEX deliveries_unfinished_by_lane
    ON webhooks.deliveries_live (endpoint_id, subject, id);
-- Bulkheads and lease recovery: what is in flight, and until when.
CREATE INDEX deliveries_delivering_by_endpoint
    ON webhooks.deliveries_live (endpoint_id, lease_expires_at) WHERE state = 'delivering';
-- Bulk recovery: failed deliveries of an endpoint since a time.
CREATE INDEX deliveries_failed_by_endpoint
    ON webhooks.deliveries_done (endpoint_id, finished_at) WHERE state = 'failed';

-- Attempts carry their event, so that the log's lists read the log alone ----

-- Calls logged before this migration get their event below, once the
-- deliveries and events are in place. The default stays: a worker of the
-- previous release, still running while this one rolls out, logs its calls
-- without an event type, and they read as ''.
ALTER TABLE webhooks.attempts ADD COLUMN event_id uuid,
                              ADD COLUMN event_type text NOT NULL DEFAULT '';
-- The log by endpoint and event type (the panel's filter), newest first.
-- Beside attempts_by_endpoint_time, not instead of it: the lists by
-- endpoint and by clinic read that one once per endpoint, where this one
-- would be read once per endpoint and type, each read starting in every
-- partition up to the cursor (the default partition keeps PostgreSQL from
-- reading the partitions in order): at 10 million calls the panel's list
-- took p99 23 ms on this index, 7 ms on its own.
CREATE INDEX attempts_by_endpoint_type_time ON webhooks.attempts (endpoint_id, event_type, started_at);

-- Every partition of the three histories, with its time range (NULL start:
-- from the beginning), size and estimated rows; the default partitions are
-- not listed. For deliveries and events, the range is of the event's time.
DROP VIEW webhooks.attempt_partitions;
CREATE VIEW webhooks.history_partitions AS
SELECT t.history,
       c.relname::text                                  AS name,
       CASE WHEN b.bounds[1] = 'MINVALUE' THEN NULL
            WHEN t.history = 'attempts' THEN trim(BOTH '''' FROM b.bounds[1])::timestamptz
            ELSE webhooks.uuid_v7_time(trim(BOTH '''' FROM b.bounds[1])::uuid) END AS range_start,
       CASE WHEN t.history = 'attempts' THEN trim(BOTH '''' FROM b.bounds[2])::timestamptz
            ELSE webhooks.uuid_v7_time(trim(BOTH '''' FROM b.bounds[2])::uuid) END AS range_end,
       greatest(c.reltuples, 0)::bigint                 AS rows_estimate,
       pg_total_relation_size(c.oid)                    AS bytes
  FROM (VALUES ('attempts', 'webhooks.attempts'::regclass),
               ('deliveries', 'webhooks.deliveries_done'::regclass),
               ('events', 'webhooks.events'::regclass)) AS t (history, parent)
  JOIN pg_inherits i ON i.inhparent = t.parent
  JOIN pg_class c ON c.oid = i.inhrelid
 CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                         '^FOR VALUES FROM \((.+)\) TO \((.+)\)$') AS bounds) b
 WHERE b.bounds IS NOT NULL;

-- Events kept past their day's partition because a delivery still pending
-- or delivering needs them (and any event no partition covered yet).
CREATE VIEW webhooks.kept_events AS
SELECT ev.id                 AS event_id,
       ev.type               AS event_type,
       ev.clinic_id,
       ev.created_at,
       count(d.id)           AS live_deliveries,
       min(d.created_at)     AS oldest_live_delivery_at
  FROM webhooks.events_default ev
  LEFT JOIN webhooks.deliveries_live d ON d.event_id = ev.id
 GROUP BY ev.id;

-- The views over the queue and the log, bound to the partitioned tables.

-- One row per HTTP call (and per attempt lost with its worker). The clinic
-- comes from the endpoint, the event from the call itself, so a call stays
-- listed after retention dropped its delivery and event (its delivery_state
-- is NULL then).
CREATE OR REPLACE VIEW webhooks.delivery_log AS
SELECT a.id                             AS attempt_id,
       a.started_at                     AS called_at,
       ep.clinic_id,
       c.code                           AS clinic_code,
       a.endpoint_id,
       a.url,
       a.event_id,
       a.event_type,
       a.delivery_id,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       d.state                          AS delivery_state
FROM webhooks.attempts a
JOIN webhooks.endpoints ep ON ep.id = a.endpoint_id
LEFT JOIN webhooks.deliveries d ON d.id = a.delivery_id
LEFT JOIN clinic.clinics c ON c.id = ep.clinic_id;

CREATE OR REPLACE VIEW webhooks.delivery_log_detail AS
SELECT l.*,
       a.request_headers,
       a.request_body,
       a.response_headers,
       a.response_body,
       a.response_truncated,
       a.worker
FROM webhooks.delivery_log l
-- started_at too: it picks the one partition to look in.
JOIN webhooks.attempts a ON a.id = l.attempt_id AND a.started_at = l.called_at;

CREATE OR REPLACE VIEW webhooks.queue_overview AS
SELECT e.id                                                        AS endpoint_id,
       e.clinic_id,
       e.version,
       e.enabled,
       e.disabled_reason,
       count(d.id) FILTER (WHERE d.state = 'pending')              AS pending,
       count(d.id) FILTER (WHERE d.state = 'pending' AND d.next_attempt_at <= now())
                                                                   AS due_now,
       count(d.id) FILTER (WHERE d.state = 'delivering')           AS delivering,
       count(d.id) FILTER (WHERE d.state = 'failed')               AS failed,
       now() - min(d.created_at) FILTER (WHERE d.state = 'pending') AS oldest_pending_age,
       min(d.next_attempt_at) FILTER (WHERE d.state = 'pending')   AS next_due_at
  FROM webhooks.endpoints e
  LEFT JOIN webhooks.deliveries d
    ON d.endpoint_id = e.id AND d.state IN ('pending', 'delivering', 'failed')
 GROUP BY e.id;

CREATE OR REPLACE VIEW webhooks.blocked_lanes AS
SELECT head.endpoint_id,
       head.subject,
       head.id                AS blocked_by_delivery,
       head.event_id          AS blocked_by_event,
       head.state             AS head_state,
       head.attempts          AS head_attempts,
       head.last_status       AS head_last_status,
       head.last_error        AS head_last_error,
       head.next_attempt_at   AS head_next_attempt_at,
       waiting.n              AS waiting,
       waiting.oldest         AS oldest_waiting_since
  FROM (SELECT DISTINCT ON (d.endpoint_id, d.subject) d.*
          FROM webhooks.deliveries d
         WHERE d.state IN ('pending', 'delivering')
         ORDER BY d.endpoint_id, d.subject, d.id) head
  JOIN webhooks.endpoints e ON e.id = head.endpoint_id AND e.ordered
 CROSS JOIN LATERAL (
        SELECT count(*) AS n, min(w.created_at) AS oldest
          FROM webhooks.deliveries w
         WHERE w.endpoint_id = head.endpoint_id
           AND w.subject = head.subject
           AND w.id > head.id
           AND w.state = 'pending') waiting
 WHERE waiting.n > 0
   AND (head.state = 'delivering' OR head.attempts > head.retry_base);

CREATE OR REPLACE VIEW webhooks.stuck_deliveries AS
SELECT d.id                          AS delivery_id,
       d.endpoint_id,
       d.event_id,
       d.attempts,
       d.leased_by,
       d.lease_expires_at,
       now() - d.lease_expires_at    AS overdue
  FROM webhooks.deliveries d
 WHERE d.state = 'delivering'
   AND d.lease_expires_at < now();

-- The history before this migration, attached where it belongs: the live
-- queue is copied into deliveries_live (it is small: the work that waits),
-- the rest stays where it is. Rows whose key lies past the legacy range
-- (an id not made by webhooks.uuid_v7, say) go through the default
-- partitions, and into their own partition once maintenance creates it.
DO $$
DECLARE
    legacy_end timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day';
    bound uuid := webhooks.uuid_v7_bound(legacy_end);
BEGIN
    INSERT INTO webhooks.deliveries OVERRIDING SYSTEM VALUE
    SELECT * FROM webhooks.deliveries_legacy
     WHERE state IN ('pending', 'delivering') OR event_id >= bound;
    DELETE FROM webhooks.deliveries_legacy
     WHERE state IN ('pending', 'delivering') OR event_id >= bound;
    IF EXISTS (SELECT 1 FROM webhooks.deliveries_legacy) THEN
        EXECUTE format('ALTER TABLE webhooks.deliveries_done ATTACH PARTITION webhooks.deliveries_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                       bound);
        ALTER TABLE webhooks.deliveries_legacy RENAME TO deliveries_done_legacy;
        ALTER INDEX webhooks.deliveries_legacy_by_event RENAME TO deliveries_done_legacy_by_event;
        ALTER INDEX webhooks.deliveries_legacy_failed_by_endpoint
            RENAME TO deliveries_done_legacy_failed_by_endpoint;
    ELSE
        DROP TABLE webhooks.deliveries_legacy;
    END IF;

    INSERT INTO webhooks.events SELECT * FROM webhooks.events_legacy WHERE id >= bound;
    DELETE FROM webhooks.events_legacy WHERE id >= bound;
    IF EXISTS (SELECT 1 FROM webhooks.events_legacy) THEN
        EXECUTE format('ALTER TABLE webhooks.events ATTACH PARTITION webhooks.events_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                       bound);
    ELSE
        DROP TABLE webhooks.events_legacy;
    END IF;
END
$$;

-- Calls logged before this migration get their event, looked up once here
-- through their delivery, so that the log's lists never have to. (This
-- writes each earlier call once more: time and WAL in proportion to the
-- log before the upgrade.)
UPDATE webhooks.attempts a
   SET event_id = d.event_id,
       event_type = ev.type
  FROM webhooks.deliveries d
  JOIN webhooks.events ev ON ev.id = d.event_id
 WHERE d.id = a.delivery_id
   AND a.event_type = '';

-- Partition maintenance and retention of the three histories; see
-- sql/schema/functions/run_maintenance.sql for what it does.
CREATE OR REPLACE FUNCTION webhooks.run_maintenance(p_keep interval DEFAULT '30 days',
                                                    p_partition interval DEFAULT '1 day',
                                                    p_ahead integer DEFAULT 7,
                                                    p_now timestamptz DEFAULT now())
RETURNS jsonb
LANGUAGE plpgsql
-- Partition bounds are days of UTC whatever the caller's time zone.
SET TimeZone = 'UTC'
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

-- Functions that move deliveries between the queue and the history, or
-- delete them, retry when a concurrent move hides the row from them.

-- Send one delivery again, now, with a fresh retry schedule. Keeps the event
-- id (webhook-id); the new calls appear in the log as further attempts.
-- A delivery that is in flight right now is left alone.
CREATE OR REPLACE FUNCTION webhooks.redeliver(p_delivery_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    found_id bigint;
BEGIN
    -- A finished delivery moves from deliveries_done back into the queue.
    -- When another transaction moved the row meanwhile, PostgreSQL cannot
    -- follow it and raises a serialization failure: look again.
    FOR try IN 1..10 LOOP
        BEGIN
            UPDATE webhooks.deliveries
               SET state = 'pending',
                   next_attempt_at = now(),
                   retry_base = attempts,
                   finished_at = NULL
             WHERE id = p_delivery_id
               AND state <> 'delivering'
            RETURNING id INTO found_id;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    IF found_id IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM webhooks.deliveries WHERE id = p_delivery_id) THEN
            RAISE EXCEPTION 'no delivery with id % (past retention, or never made)', p_delivery_id
                USING ERRCODE = 'no_data_found';
        END IF;
        RAISE NOTICE 'delivery % is in flight; it was left alone', p_delivery_id;
        RETURN NULL;
    END IF;
    PERFORM pg_notify('clinic_webhooks', '');
    RETURN found_id;
END
$$;

-- Bulk recovery (like Svix's "recover"): everything that finally failed for
-- an endpoint since a time is sent again. Returns how many.
CREATE OR REPLACE FUNCTION webhooks.recover(p_endpoint_id bigint, p_since timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    -- The deliveries move from deliveries_done back into the queue; a row
    -- another transaction moved meanwhile is a serialization failure: again.
    FOR try IN 1..10 LOOP
        BEGIN
            UPDATE webhooks.deliveries
               SET state = 'pending',
                   next_attempt_at = now(),
                   retry_base = attempts,
                   finished_at = NULL
             WHERE endpoint_id = p_endpoint_id
               AND state = 'failed'
               AND finished_at >= p_since;
            GET DIAGNOSTICS n = ROW_COUNT;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    IF n > 0 THEN
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
    RETURN n;
END
$$;

-- What ON DELETE CASCADE foreign keys would have done.
CREATE OR REPLACE FUNCTION webhooks.endpoints_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhooks.attempts a USING old_rows o WHERE a.endpoint_id = o.id;
    -- A delivery whose result a worker records meanwhile moves to
    -- deliveries_done, and PostgreSQL cannot follow the row (a
    -- serialization failure): delete again, with a new snapshot.
    FOR try IN 1..10 LOOP
        BEGIN
            DELETE FROM webhooks.deliveries d USING old_rows o WHERE d.endpoint_id = o.id;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    RETURN NULL;
END
$$;

-- Run by every worker once a second, as worker p_worker: notes which other
-- workers' presence locks are free (read from pg_locks, so looking takes no
-- lock), takes back the deliveries of those free for p_grace_seconds and
-- those whose lease expired, and forgets workers that are gone and hold
-- nothing. A worker never takes its own deliveries back by presence (only
-- by an expired lease). Returns how many deliveries came back, by reason.
CREATE OR REPLACE FUNCTION webhooks.recover_lost_deliveries(p_worker text, p_grace_seconds double precision,
                                                 OUT worker_lost integer,
                                                 OUT lease_expired integer)
LANGUAGE plpgsql AS $$
DECLARE
    gone text[];
BEGIN
    WITH held AS (
        SELECT l.objid::bigint AS id
          FROM pg_locks l
         WHERE l.locktype = 'advisory'
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = 1128813
           AND l.objsubid = 2
           AND l.granted
    )
    UPDATE webhooks.workers w
       SET lost_since = CASE WHEN w.lost_since IS NULL THEN now() END
     WHERE w.name <> p_worker
       AND (w.id IN (SELECT id FROM held)) = (w.lost_since IS NOT NULL);

    SELECT coalesce(array_agg(w.name), '{}') INTO gone
      FROM webhooks.workers w
     WHERE w.name <> p_worker
       AND w.lost_since < now() - make_interval(secs => p_grace_seconds);

    -- A delivery whose result its worker records meanwhile moves to
    -- deliveries_done, and PostgreSQL cannot follow the row to lock it (a
    -- serialization failure): look again, with a new snapshot.
    FOR try IN 1..10 LOOP
        BEGIN
            SELECT t.worker_lost, t.lease_expired INTO worker_lost, lease_expired
              FROM webhooks.take_back_deliveries(gone, p_worker) t;
            EXIT;
        EXCEPTION WHEN serialization_failure THEN
            IF try = 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;

    DELETE FROM webhooks.workers w
     WHERE w.name = ANY (gone)
       AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d
                        WHERE d.state = 'delivering' AND d.leased_by = w.name);
END
$$;

-- Takes back the deliveries in flight for a worker named in p_gone, and
-- those whose lease expired, as worker p_by: each is pending again at once,
-- and its lost attempt is logged as 'abandoned' (by p_by; the error names
-- the worker that lost it). An attempt lost with a dead worker does not use
-- up a place in the retry schedule (retry_base moves with it), so it is
-- claimed again as what it was, a first attempt or a retry; one lost to an
-- expired lease does, as a timeout would. A late result of either replaces
-- its 'abandoned' row (sql/worker/record_attempts.sql).
CREATE OR REPLACE FUNCTION webhooks.take_back_deliveries(p_gone text[], p_by text,
                                              OUT worker_lost integer,
                                              OUT lease_expired integer)
LANGUAGE sql AS $$
    WITH lost AS (
        SELECT d.id, d.attempts, d.endpoint_id, d.event_id, d.leased_by,
               d.leased_by = ANY (p_gone) AS gone
          FROM webhooks.deliveries d
         WHERE d.state = 'delivering'
           AND (d.leased_by = ANY (p_gone) OR d.lease_expires_at < now())
           FOR UPDATE OF d SKIP LOCKED
    ),
    reset AS (
        UPDATE webhooks.deliveries d
           SET state = 'pending',
               next_attempt_at = now(),
               retry_base = d.retry_base + CASE WHEN x.gone THEN 1 ELSE 0 END,
               lease_expires_at = NULL,
               leased_by = NULL,
               last_error = CASE WHEN x.gone THEN 'worker lost' ELSE 'lease expired' END
          FROM lost x
         WHERE d.id = x.id
    ),
    logged AS (
        INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_id, event_type, attempt,
                                       started_at, url, outcome, error_kind, error,
                                       next_attempt_at, worker)
        SELECT x.id, x.endpoint_id, x.event_id, coalesce(ev.type, ''), x.attempts, now(), e.url,
               'abandoned',
               CASE WHEN x.gone THEN 'worker_lost' ELSE 'lease_expired' END,
               'worker ' || coalesce(x.leased_by, '?')
                   || CASE WHEN x.gone
                           THEN ' is gone (its database session ended) without reporting this attempt'
                           ELSE ' did not report this attempt before its lease expired' END
                   || '; ' || p_by || ' took the delivery back to send it again',
               now(), p_by
          FROM lost x
          JOIN webhooks.endpoints e ON e.id = x.endpoint_id
          LEFT JOIN webhooks.events ev ON ev.id = x.event_id
        RETURNING error_kind
    )
    SELECT (count(*) FILTER (WHERE error_kind = 'worker_lost'))::int,
           (count(*) FILTER (WHERE error_kind = 'lease_expired'))::int
      FROM logged
$$;

SELECT webhooks.run_maintenance();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_reader') THEN
        GRANT SELECT ON webhooks.history_partitions, webhooks.kept_events TO clinic_webhooks_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'clinic_webhooks_reader may not read the history views: %', SQLERRM;
END
$$;
