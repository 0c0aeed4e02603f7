-- The attempt log in time partitions, so that retention drops whole
-- partitions: the same cost for a day of a thousand calls or of ten
-- million, no dead rows, no VACUUM afterwards.
--
--   webhooks.attempts           partitioned by RANGE (started_at), one
--                               partition per day by default, created ahead
--                               of time by webhooks.run_maintenance()
--   webhooks.attempts_default   the safety net: a row no partition covers
--                               lands here (and a warning says so); it moves
--                               into its partition once that is created
--   webhooks.attempts_legacy    what the log held before this migration (if
--                               anything), attached as it is (nothing is copied),
--                               covering all time up to the end of the day
--                               the migration ran; dropped whole once that
--                               day is past the retention period
--   webhooks.attempt_partitions every partition with its time range, size
--                               and estimated rows
--
-- The primary key becomes (id, started_at): a key of a partitioned table
-- must hold its partition key. Ids still come from one sequence.

ALTER TABLE webhooks.attempts RENAME TO attempts_legacy;
ALTER INDEX webhooks.attempts_by_delivery RENAME TO attempts_legacy_by_delivery;
ALTER INDEX webhooks.attempts_by_endpoint_time RENAME TO attempts_legacy_by_endpoint_time;
ALTER TABLE webhooks.attempts_legacy DROP CONSTRAINT attempts_pkey;
ALTER TABLE webhooks.attempts_legacy ALTER COLUMN id DROP IDENTITY;

CREATE TABLE webhooks.attempts (
    LIKE webhooks.attempts_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (id, started_at)
) PARTITION BY RANGE (started_at);
ALTER TABLE webhooks.attempts ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('webhooks.attempts', 'id'),
              coalesce((SELECT max(id) FROM webhooks.attempts_legacy), 0) + 1, false);
CREATE INDEX attempts_by_delivery ON webhooks.attempts (delivery_id, attempt);
CREATE INDEX attempts_by_endpoint_time ON webhooks.attempts (endpoint_id, started_at);

DO $$
DECLARE
    legacy_end timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day';
BEGIN
    -- A validated CHECK lets ATTACH skip its own scan of the table.
    EXECUTE format('ALTER TABLE webhooks.attempts_legacy ADD CONSTRAINT attempts_legacy_range CHECK (started_at < %L)',
                   legacy_end);
    EXECUTE format('ALTER TABLE webhooks.attempts ATTACH PARTITION webhooks.attempts_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                   legacy_end);
    ALTER TABLE webhooks.attempts_legacy DROP CONSTRAINT attempts_legacy_range;
END
$$;
CREATE TABLE webhooks.attempts_default PARTITION OF webhooks.attempts DEFAULT;

-- Every partition of the log, with its time range (NULL start: from the
-- beginning), size and estimated rows; the default partition is not listed.
CREATE OR REPLACE VIEW webhooks.attempt_partitions AS
SELECT c.relname::text                                              AS name,
       CASE WHEN b.bounds[1] <> 'MINVALUE'
            THEN trim(BOTH '''' FROM b.bounds[1])::timestamptz END  AS range_start,
       trim(BOTH '''' FROM b.bounds[2])::timestamptz                AS range_end,
       greatest(c.reltuples, 0)::bigint                             AS rows_estimate,
       pg_total_relation_size(c.oid)                                AS bytes
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
 CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                         '^FOR VALUES FROM \((.+)\) TO \((.+)\)$') AS bounds) b
 WHERE i.inhparent = 'webhooks.attempts'::regclass
   AND b.bounds IS NOT NULL;


-- The views over the log, bound to the partitioned table.
-- One row per HTTP call (and per attempt lost with its worker).
CREATE OR REPLACE VIEW webhooks.delivery_log AS
SELECT a.id               AS attempt_id,
       a.started_at       AS called_at,
       ev.clinic_id,
       c.code             AS clinic_code,
       a.endpoint_id,
       a.url,
       d.event_id,
       ev.type            AS event_type,
       d.id               AS delivery_id,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       d.state            AS delivery_state
FROM webhooks.attempts a
JOIN webhooks.deliveries d ON d.id = a.delivery_id
JOIN webhooks.events ev ON ev.id = d.event_id
LEFT JOIN clinic.clinics c ON c.id = ev.clinic_id;

-- The detail of one call: exactly what was sent and what came back.
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

-- Per endpoint, calls, success rate and latency (p50, p95) over the last
-- hour and the last day, in one pass over the last day's calls. Computed in
-- the view itself, not in a function it calls: a function called from a view
-- runs with the caller's rights, and the read-only role cannot read
-- webhooks.attempts. Lost-lease attempts are not calls.
CREATE OR REPLACE VIEW webhooks.endpoint_health AS
SELECT e.id AS endpoint_id,
       e.clinic_id,
       e.url,
       e.enabled,
       e.failing_since,
       e.disabled_reason,
       s.calls_1h,
       s.success_rate_1h,
       s.p50_ms_1h,
       s.p95_ms_1h,
       s.calls_24h,
       s.success_rate_24h,
       s.p50_ms_24h,
       s.p95_ms_24h
  FROM webhooks.endpoints e
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE a.last_hour)                       AS calls_1h,
               round(avg((a.outcome = 'succeeded')::int) FILTER (WHERE a.last_hour), 4)
                                                                         AS success_rate_1h,
               round((percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms)
                          FILTER (WHERE a.last_hour))::numeric, 1)       AS p50_ms_1h,
               round((percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms)
                          FILTER (WHERE a.last_hour))::numeric, 1)       AS p95_ms_1h,
               count(*)                                                  AS calls_24h,
               round(avg((a.outcome = 'succeeded')::int), 4)             AS success_rate_24h,
               round(percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1)
                                                                         AS p50_ms_24h,
               round(percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1)
                                                                         AS p95_ms_24h
          FROM (SELECT at.outcome, at.duration_ms,
                       at.started_at > now() - interval '1 hour' AS last_hour
                  FROM webhooks.attempts at
                 WHERE at.endpoint_id = e.id
                   AND at.started_at > now() - interval '1 day'
                   AND at.outcome <> 'abandoned') a
       ) s;

-- Partition maintenance and retention, run by exactly one caller at a time
-- (a transaction-level advisory lock; a second caller returns at once with
-- ran = false). The worker runs it on a schedule (`retention.*` in
-- config.toml); a DBA may instead run it from pg_cron:
--   SELECT webhooks.run_maintenance('30 days');
-- It creates the partitions for the next p_ahead periods of p_partition,
-- drops every partition wholly older than p_keep, and returns what it did.
-- p_now stands for the current time (for tests, and for a DBA planning a
-- change). Deliveries and events are not touched: a pending delivery keeps
-- its event whatever its age.
CREATE OR REPLACE FUNCTION webhooks.run_maintenance(p_keep interval DEFAULT '30 days',
                                                    p_partition interval DEFAULT '1 day',
                                                    p_ahead integer DEFAULT 7,
                                                    p_now timestamptz DEFAULT now())
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := p_now - p_keep;
    horizon timestamptz := p_now + p_ahead * p_partition;
    created text[] := '{}';
    dropped text[] := '{}';
    dropped_rows bigint := 0;
    expired_in_default bigint;
    in_default bigint;
    moved integer;
    part record;
    range_start timestamptz;
    range_end timestamptz;
    name text;
BEGIN
    IF p_keep <= interval '0' OR p_partition < interval '1 hour' OR p_ahead < 1 THEN
        RAISE EXCEPTION 'run_maintenance needs keep > 0, partition >= 1 hour and ahead >= 1 (got %, %, %)',
                        p_keep, p_partition, p_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_try_advisory_xact_lock(1128814, 1) THEN
        RETURN jsonb_build_object('ran', false, 'reason', 'another maintenance run is in progress');
    END IF;
    -- Creating and dropping a partition briefly locks the whole log; wait
    -- for that no longer than this, and fail (to be run again) rather than
    -- queue every writer behind it.
    SET LOCAL lock_timeout = '5s';

    -- Partitions ahead, from the end of the newest one (or the start of
    -- p_now's day) to p_ahead partitions past p_now. Rows that went to the
    -- default partition for want of one of them move into it.
    range_start := coalesce((SELECT max(p.range_end) FROM webhooks.attempt_partitions p),
                            date_trunc('day', p_now));
    WHILE range_start < horizon LOOP
        range_end := range_start + p_partition;
        -- A period already past retention gets no partition (its rows, if
        -- any, stay in the default partition and expire from there).
        IF range_end > cutoff THEN
            name := 'attempts_' || to_char(range_start AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MI');
            moved := 0;
            IF EXISTS (SELECT 1 FROM webhooks.attempts_default
                        WHERE started_at >= range_start AND started_at < range_end) THEN
                CREATE TEMP TABLE run_maintenance_moved (LIKE webhooks.attempts) ON COMMIT DROP;
                WITH m AS (
                    DELETE FROM webhooks.attempts_default
                     WHERE started_at >= range_start AND started_at < range_end
                    RETURNING *
                )
                INSERT INTO run_maintenance_moved SELECT * FROM m;
                GET DIAGNOSTICS moved = ROW_COUNT;
            END IF;
            EXECUTE format('CREATE TABLE webhooks.%I PARTITION OF webhooks.attempts FOR VALUES FROM (%L) TO (%L)',
                           name, range_start, range_end);
            IF moved > 0 THEN
                INSERT INTO webhooks.attempts OVERRIDING SYSTEM VALUE SELECT * FROM run_maintenance_moved;
                DROP TABLE run_maintenance_moved;
            END IF;
            created := created || name;
        END IF;
        range_start := range_end;
    END LOOP;

    -- Partitions wholly older than the retention period go at once: a
    -- dropped partition leaves no dead rows and needs no VACUUM.
    FOR part IN SELECT p.name, p.rows_estimate FROM webhooks.attempt_partitions p
                 WHERE p.range_end <= cutoff ORDER BY p.range_end LOOP
        EXECUTE format('DROP TABLE webhooks.%I', part.name);
        dropped := dropped || part.name;
        dropped_rows := dropped_rows + greatest(part.rows_estimate, 0);
    END LOOP;

    -- The default partition only holds rows no partition was there for.
    DELETE FROM webhooks.attempts_default WHERE started_at < cutoff;
    GET DIAGNOSTICS expired_in_default = ROW_COUNT;
    SELECT count(*) INTO in_default FROM webhooks.attempts_default;
    IF in_default > 0 THEN
        RAISE WARNING '% attempts are in webhooks.attempts_default: no partition covered their time (they move into one when it is created)',
                      in_default;
    END IF;
    RETURN jsonb_build_object(
        'ran', true,
        'keep', p_keep::text,
        'cutoff', cutoff,
        'created', to_jsonb(created),
        'dropped', to_jsonb(dropped),
        'dropped_rows_estimate', dropped_rows,
        'expired_rows_deleted_from_default', expired_in_default,
        'rows_in_default', in_default);
END
$$;


-- A new database has no history to keep: its log starts with the partitions
-- of today and the days ahead.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks.attempts_legacy) THEN
        DROP TABLE webhooks.attempts_legacy;
    END IF;
END
$$;

SELECT webhooks.run_maintenance();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_reader') THEN
        GRANT SELECT ON webhooks.attempt_partitions TO clinic_webhooks_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'clinic_webhooks_reader may not read webhooks.attempt_partitions: %', SQLERRM;
END
$$;
