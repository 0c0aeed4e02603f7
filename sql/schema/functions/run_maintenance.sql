-- Current definition of webhooks.run_maintenance, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Partition maintenance and retention of the attempt log, by one caller at
-- a time (a transaction-level advisory lock; another caller returns at once
-- with ran = false): creates the partitions of the next p_ahead periods of
-- p_partition, drops every partition wholly older than p_keep, and returns
-- what it did. p_now stands for the current time. Deliveries and events are
-- not touched. Run by the worker on a schedule, or by a DBA:
--   SELECT webhooks.run_maintenance('30 days');
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
