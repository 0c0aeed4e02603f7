-- The queue's gauges for /metrics, sampled every few seconds by each worker
-- whose operations listener is on: one statement over the queue
-- (webhooks.deliveries_live) and the endpoints, never over the history.
-- (The "name!" aliases tell sqlx the columns are never NULL.)
SELECT count(*) FILTER (WHERE d.state = 'pending')                          AS "pending!",
       count(*) FILTER (WHERE d.state = 'pending' AND d.next_attempt_at <= now()) AS "due!",
       count(*) FILTER (WHERE d.state = 'delivering')                       AS "delivering!",
       coalesce(extract(epoch FROM now() - min(d.next_attempt_at)
                        FILTER (WHERE d.state = 'pending' AND d.next_attempt_at <= now())),
                0)::float8                                                   AS "oldest_due_age_s!",
       (SELECT count(*) FROM webhooks.endpoints WHERE enabled AND failing_since IS NULL)
                                                                             AS "endpoints_enabled!",
       (SELECT count(*) FROM webhooks.endpoints WHERE enabled AND failing_since IS NOT NULL)
                                                                             AS "endpoints_failing!",
       (SELECT count(*) FROM webhooks.endpoints WHERE NOT enabled)           AS "endpoints_disabled!"
  FROM webhooks.deliveries_live d
