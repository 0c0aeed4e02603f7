-- The newest migration applied to this database (/readyz compares it with
-- the newest this binary carries).
SELECT max(version) AS version FROM webhooks._sqlx_migrations WHERE success
