-- Current definition of webhooks.history_partitions, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Every partition of the three histories, with its time range (NULL start:
-- from the beginning), size and estimated rows; the default partitions are
-- not listed. For deliveries and events, the range is of the event's time.
CREATE OR REPLACE VIEW webhooks.history_partitions AS
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
