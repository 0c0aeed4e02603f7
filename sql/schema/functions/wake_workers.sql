-- Current definition of webhooks.wake_workers, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- NOTIFY makes PostgreSQL serialize the commits of notifying transactions (a
-- lock held through the WAL flush), which would cost the app its group
-- commit. So only one transaction at a time notifies: the one holding this
-- lock. The others commit freely; the worker's claim after each wake-up, a
-- second look 10 ms after any claim that found work, and its poll interval
-- pick their events up.
CREATE OR REPLACE FUNCTION webhooks.wake_workers() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(1128812, 0) THEN
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
END
$$;
