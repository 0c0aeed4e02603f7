-- Takes back deliveries whose worker is gone (its presence lock free for $2
-- seconds) or whose lease expired, as worker $1, and logs each lost attempt
-- as 'abandoned'. Run by every worker once a second; see
-- sql/schema/functions/recover_lost_deliveries.sql.
SELECT worker_lost AS "worker_lost!", lease_expired AS "lease_expired!"
  FROM webhooks.recover_lost_deliveries($1, $2)
