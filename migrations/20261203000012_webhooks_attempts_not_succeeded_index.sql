-- The log list filtered to calls that did not succeed
-- (sql/log/failed_calls_by_clinic.sql): a partial index holds only those, so
-- that a page of them is read newest first without passing over the
-- successes between them.
CREATE INDEX attempts_not_succeeded_by_endpoint_time
    ON webhooks.attempts (endpoint_id, started_at)
    WHERE outcome <> 'succeeded';
