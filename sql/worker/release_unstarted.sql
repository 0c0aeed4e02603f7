-- On shutdown: hands back deliveries this worker ($2) claimed but never
-- started, as if the claim had not happened (no attempt is counted).
UPDATE webhooks.deliveries
   SET state = 'pending',
       attempts = attempts - 1,
       lease_expires_at = NULL,
       leased_by = NULL
 WHERE id = ANY ($1::bigint[])
   AND state = 'delivering'
   AND leased_by = $2
