-- Current definition of webhooks.deregister_worker, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- A worker that stops cleanly leaves no trace.
CREATE OR REPLACE FUNCTION webhooks.deregister_worker(p_name text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM webhooks.workers w
     WHERE w.name = p_name
       AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d
                        WHERE d.state = 'delivering' AND d.leased_by = w.name)
$$;
