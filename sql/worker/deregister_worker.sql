-- On a clean stop: forgets worker $1 unless it still holds a delivery.
SELECT webhooks.deregister_worker($1)
