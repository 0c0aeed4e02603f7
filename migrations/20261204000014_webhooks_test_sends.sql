-- Test sends (the admin panel's "send test", webhooks.send_test): an
-- example event sent to one endpoint, marked test = true on its event, its
-- delivery and every call in the log. The columns have a constant default,
-- which PostgreSQL keeps in the catalog: no table is rewritten.
ALTER TABLE webhooks.events ADD COLUMN test boolean NOT NULL DEFAULT false;
ALTER TABLE webhooks.deliveries ADD COLUMN test boolean NOT NULL DEFAULT false;
ALTER TABLE webhooks.attempts ADD COLUMN test boolean NOT NULL DEFAULT false;

-- An example snapshot of each event type, as the triggers would record it
-- (ids 0, times now): what a test send renders.
CREATE OR REPLACE FUNCTION webhooks.example_snapshot(p_type text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_type = 'user.created' THEN
            jsonb_build_object('id', 0, 'role', 'patient', 'source', 'signup', 'created_by', NULL)
        ELSE
            jsonb_build_object(
                'id', 0,
                'member_id', 0,
                'provider_id', 0,
                'start', webhooks.unix_seconds(now()),
                'end', webhooks.unix_seconds(now() + interval '15 minutes'),
                'actual_start', CASE WHEN p_type <> 'visit.created' THEN webhooks.unix_seconds(now()) END,
                'actual_end', CASE WHEN p_type IN ('visit.ended', 'visit.note.signed_and_sent',
                                                   'visit.invoice.processed')
                                   THEN webhooks.unix_seconds(now() + interval '15 minutes') END,
                'status', CASE p_type WHEN 'visit.created' THEN 10 WHEN 'visit.updated' THEN 30 ELSE 50 END,
                'status_name', CASE p_type WHEN 'visit.created' THEN 'new'
                                           WHEN 'visit.updated' THEN 'inprogress' ELSE 'completed' END,
                'status_updated_by', 0)
            || CASE p_type
                   WHEN 'visit.note.signed_and_sent' THEN
                       jsonb_build_object('note', jsonb_build_object('id', 0, 'status', 'signed'))
                   WHEN 'visit.invoice.processed' THEN
                       jsonb_build_object('invoice', jsonb_build_object(
                           'id', 0, 'status', 'paid', 'amount_due', 0, 'amount_paid', 4500,
                           'currency', 'USD'))
                   ELSE '{}'::jsonb
               END
    END
$$;

-- The admin panel's "send test": an example event of p_event_type (default:
-- the first type the endpoint subscribes to, else visit.created), sent to
-- this endpoint only, rendered in its version and signed like any other,
-- logged like any other with test = true. It has a lane of its own, so it
-- neither waits behind nor holds up the endpoint's real events. Returns the
-- event id (the webhook-id). An endpoint that is disabled gets it when it
-- is enabled again.
CREATE OR REPLACE FUNCTION webhooks.send_test(p_endpoint_id bigint, p_event_type text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    ep webhooks.endpoints;
    chosen text;
    event uuid := webhooks.uuid_v7();
BEGIN
    SELECT * INTO ep FROM webhooks.endpoints WHERE id = p_endpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no endpoint with id %', p_endpoint_id USING ERRCODE = 'no_data_found';
    END IF;
    chosen := coalesce(p_event_type, ep.event_types[1], 'visit.created');
    IF NOT chosen = ANY (webhooks.event_types()) THEN
        RAISE EXCEPTION 'unknown event type %; one of %', chosen, array_to_string(webhooks.event_types(), ', ')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot, test)
    VALUES (event, chosen, ep.clinic_id, 'test:' || event, webhooks.example_snapshot(chosen), true);
    INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject, test)
    VALUES (event, ep.id, 'test:' || event, true);
    IF NOT ep.enabled THEN
        RAISE NOTICE 'endpoint % is disabled: the test is sent when it is enabled again', ep.id;
    END IF;
    PERFORM pg_notify('clinic_webhooks', '');
    RETURN event;
END
$$;

-- Takes back the deliveries in flight for a worker named in p_gone, and
-- those whose lease expired, as worker p_by: each is pending again at once,
-- and its lost attempt is logged as 'abandoned' (by p_by; the error names
-- the worker that lost it). An attempt lost with a dead worker does not use
-- up a place in the retry schedule (retry_base moves with it), so it is
-- claimed again as what it was, a first attempt or a retry; one lost to an
-- expired lease does, as a timeout would. A late result of either replaces
-- its 'abandoned' row (sql/worker/record_attempts.sql).
CREATE OR REPLACE FUNCTION webhooks.take_back_deliveries(p_gone text[], p_by text,
                                              OUT worker_lost integer,
                                              OUT lease_expired integer)
LANGUAGE sql AS $$
    WITH lost AS (
        SELECT d.id, d.attempts, d.endpoint_id, d.event_id, d.test, d.leased_by,
               d.leased_by = ANY (p_gone) AS gone
          FROM webhooks.deliveries d
         WHERE d.state = 'delivering'
           AND (d.leased_by = ANY (p_gone) OR d.lease_expires_at < now())
           FOR UPDATE OF d SKIP LOCKED
    ),
    reset AS (
        UPDATE webhooks.deliveries d
           SET state = 'pending',
               next_attempt_at = now(),
               retry_base = d.retry_base + CASE WHEN x.gone THEN 1 ELSE 0 END,
               lease_expires_at = NULL,
               leased_by = NULL,
               last_error = CASE WHEN x.gone THEN 'worker lost' ELSE 'lease expired' END
          FROM lost x
         WHERE d.id = x.id
    ),
    logged AS (
        INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_id, event_type, attempt,
                                       started_at, url, outcome, error_kind, error,
                                       next_attempt_at, worker, test)
        SELECT x.id, x.endpoint_id, x.event_id, coalesce(ev.type, ''), x.attempts, now(), e.url,
               'abandoned',
               CASE WHEN x.gone THEN 'worker_lost' ELSE 'lease_expired' END,
               'worker ' || coalesce(x.leased_by, '?')
                   || CASE WHEN x.gone
                           THEN ' is gone (its database session ended) without reporting this attempt'
                           ELSE ' did not report this attempt before its lease expired' END
                   || '; ' || p_by || ' took the delivery back to send it again',
               now(), p_by, x.test
          FROM lost x
          JOIN webhooks.endpoints e ON e.id = x.endpoint_id
          LEFT JOIN webhooks.events ev ON ev.id = x.event_id
        RETURNING error_kind
    )
    SELECT (count(*) FILTER (WHERE error_kind = 'worker_lost'))::int,
           (count(*) FILTER (WHERE error_kind = 'lease_expired'))::int
      FROM logged
$$;

-- One row per HTTP call (and per attempt lost with its worker). The clinic
-- comes from the endpoint, the event from the call itself, so a call stays
-- listed after retention dropped its delivery and event (its delivery_state
-- is NULL then). test: a call of webhooks.send_test.
CREATE OR REPLACE VIEW webhooks.delivery_log AS
SELECT a.id                             AS attempt_id,
       a.started_at                     AS called_at,
       ep.clinic_id,
       c.code                           AS clinic_code,
       a.endpoint_id,
       a.url,
       a.event_id,
       a.event_type,
       a.delivery_id,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       d.state                          AS delivery_state,
       a.test
FROM webhooks.attempts a
JOIN webhooks.endpoints ep ON ep.id = a.endpoint_id
LEFT JOIN webhooks.deliveries d ON d.id = a.delivery_id
LEFT JOIN clinic.clinics c ON c.id = ep.clinic_id;

-- Its inner SELECT d.* now has the new column.
CREATE OR REPLACE VIEW webhooks.blocked_lanes AS
SELECT head.endpoint_id,
       head.subject,
       head.id                AS blocked_by_delivery,
       head.event_id          AS blocked_by_event,
       head.state             AS head_state,
       head.attempts          AS head_attempts,
       head.last_status       AS head_last_status,
       head.last_error        AS head_last_error,
       head.next_attempt_at   AS head_next_attempt_at,
       waiting.n              AS waiting,
       waiting.oldest         AS oldest_waiting_since
  FROM (SELECT DISTINCT ON (d.endpoint_id, d.subject) d.*
          FROM webhooks.deliveries d
         WHERE d.state IN ('pending', 'delivering')
         ORDER BY d.endpoint_id, d.subject, d.id) head
  JOIN webhooks.endpoints e ON e.id = head.endpoint_id AND e.ordered
 CROSS JOIN LATERAL (
        SELECT count(*) AS n, min(w.created_at) AS oldest
          FROM webhooks.deliveries w
         WHERE w.endpoint_id = head.endpoint_id
           AND w.subject = head.subject
           AND w.id > head.id
           AND w.state = 'pending') waiting
 WHERE waiting.n > 0
   AND (head.state = 'delivering' OR head.attempts > head.retry_base);

-- A column in the middle of the detail: made again, and granted again.
DROP VIEW webhooks.delivery_log_detail;
CREATE VIEW webhooks.delivery_log_detail AS
SELECT l.*,
       a.request_headers,
       a.request_body,
       a.response_headers,
       a.response_body,
       a.response_truncated,
       a.worker
FROM webhooks.delivery_log l
-- started_at too: it picks the one partition to look in.
JOIN webhooks.attempts a ON a.id = l.attempt_id AND a.started_at = l.called_at;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_webhooks_reader') THEN
        GRANT SELECT ON webhooks.delivery_log_detail TO clinic_webhooks_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'clinic_webhooks_reader may not read webhooks.delivery_log_detail: %', SQLERRM;
END
$$;
