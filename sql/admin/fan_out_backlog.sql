-- Events committed but not yet turned into deliveries by a worker (each
-- worker's claim fans them out first), and the age of the oldest. Nonzero
-- for long only when no worker runs. Used by `clinic-webhooks status`.
SELECT events,
       round(extract(epoch FROM oldest_age))::bigint AS oldest_s
  FROM webhooks.fan_out_backlog
