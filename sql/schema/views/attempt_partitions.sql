-- Current definition of webhooks.attempt_partitions, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Every partition of the attempt log with its time range (NULL start: from
-- the beginning), size and estimated rows; the default partition is not
-- listed.
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
