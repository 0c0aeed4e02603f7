-- Registers worker $1 and takes its presence lock on this session, which
-- must stay open for as long as the worker runs. Returns its id.
SELECT webhooks.register_worker($1) AS "id!"
