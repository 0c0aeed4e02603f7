-- Worker $1 (its id) takes its presence lock again on a new session, after
-- its connection was lost.
SELECT webhooks.resume_worker($1)
