-- The first statement of a claim transaction: takes the claim lock of every
-- enabled endpoint with due work that no other worker is claiming for right
-- now, and returns their ids. Held to commit, so one claimer per endpoint at
-- a time hands out its free slots. A statement of its own, because the
-- claim that follows must see every claim committed before it got the lock:
-- a snapshot taken before the lock could miss one and overbook the bulkhead.
--
-- Advisory lock keys (1128812, n): n = 0 is the triggers' notifier slot;
-- n > 0 is one claimer per endpoint.
SELECT e.id
  FROM webhooks.endpoints e
 WHERE e.enabled
   AND EXISTS (SELECT 1
                 FROM webhooks.deliveries p
                WHERE p.endpoint_id = e.id
                  AND p.state = 'pending'
                  AND p.next_attempt_at <= now())
   AND pg_try_advisory_xact_lock(1128812, (e.id % 2147483646)::int + 1)
