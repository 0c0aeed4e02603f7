-- What the admin panel and DBAs read (the log, its detail) and the SQL
-- functions that send something again. The named queries over these live in
-- sql/log and sql/admin.

-- One row per HTTP call (and per attempt lost with its worker).
CREATE VIEW webhooks.delivery_log AS
SELECT a.id               AS attempt_id,
       a.started_at       AS called_at,
       ev.clinic_id,
       c.code             AS clinic_code,
       a.endpoint_id,
       a.url,
       d.event_id,
       ev.type            AS event_type,
       d.id               AS delivery_id,
       a.attempt,
       a.response_status,
       a.duration_ms,
       a.outcome,
       a.error_kind,
       a.error,
       a.next_attempt_at,
       d.state            AS delivery_state
FROM webhooks.attempts a
JOIN webhooks.deliveries d ON d.id = a.delivery_id
JOIN webhooks.events ev ON ev.id = d.event_id
LEFT JOIN clinic.clinics c ON c.id = ev.clinic_id;

COMMENT ON VIEW webhooks.delivery_log IS
    'One row per webhook call: when, clinic, endpoint, event, attempt, response status, duration, outcome, error.';

-- The detail of one call: exactly what was sent and what came back.
CREATE VIEW webhooks.delivery_log_detail AS
SELECT l.*,
       a.request_headers,
       a.request_body,
       a.response_headers,
       a.response_body,
       a.response_truncated,
       a.worker
FROM webhooks.delivery_log l
JOIN webhooks.attempts a ON a.id = l.attempt_id;

COMMENT ON VIEW webhooks.delivery_log_detail IS
    'A delivery_log row plus the request headers and body sent and the response headers and (truncated) body.';

-- Send one delivery again, now, with a fresh retry schedule. Keeps the event
-- id (webhook-id); the new calls appear in the log as further attempts.
-- A delivery that is in flight right now is left alone.
CREATE FUNCTION webhooks.redeliver(p_delivery_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    found_id bigint;
BEGIN
    UPDATE webhooks.deliveries
       SET state = 'pending',
           next_attempt_at = now(),
           retry_base = attempts,
           finished_at = NULL
     WHERE id = p_delivery_id
       AND state <> 'delivering'
    RETURNING id INTO found_id;
    IF found_id IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM webhooks.deliveries WHERE id = p_delivery_id) THEN
            RAISE EXCEPTION 'no delivery with id %', p_delivery_id USING ERRCODE = 'no_data_found';
        END IF;
        RAISE NOTICE 'delivery % is in flight; it was left alone', p_delivery_id;
        RETURN NULL;
    END IF;
    PERFORM pg_notify('clinic_webhooks', '');
    RETURN found_id;
END
$$;

-- Send an event again: to every endpoint it went to, or to one endpoint
-- (which may have been added after the event: the body is rendered for that
-- endpoint's version). The endpoint must belong to the event's clinic.
CREATE FUNCTION webhooks.redeliver_event(p_event_id uuid, p_endpoint_id bigint DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    ev_clinic bigint;
    ev_subject text;
    ep_clinic bigint;
    delivery bigint;
BEGIN
    SELECT clinic_id, subject INTO ev_clinic, ev_subject FROM webhooks.events WHERE id = p_event_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no event with id %', p_event_id USING ERRCODE = 'no_data_found';
    END IF;
    IF p_endpoint_id IS NULL THEN
        FOR delivery IN
            SELECT id FROM webhooks.deliveries WHERE event_id = p_event_id ORDER BY id
        LOOP
            RETURN QUERY SELECT r FROM webhooks.redeliver(delivery) AS r WHERE r IS NOT NULL;
        END LOOP;
        RETURN;
    END IF;
    SELECT clinic_id INTO ep_clinic FROM webhooks.endpoints WHERE id = p_endpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no endpoint with id %', p_endpoint_id USING ERRCODE = 'no_data_found';
    END IF;
    IF ep_clinic <> ev_clinic THEN
        -- Never send one clinic's data to another clinic's URL.
        RAISE EXCEPTION 'endpoint % belongs to clinic %, event % to clinic %',
            p_endpoint_id, ep_clinic, p_event_id, ev_clinic USING ERRCODE = 'check_violation';
    END IF;
    SELECT id INTO delivery FROM webhooks.deliveries
     WHERE event_id = p_event_id AND endpoint_id = p_endpoint_id
     ORDER BY id LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT r FROM webhooks.redeliver(delivery) AS r WHERE r IS NOT NULL;
        RETURN;
    END IF;
    INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject)
    VALUES (p_event_id, p_endpoint_id, ev_subject)
    RETURNING id INTO delivery;
    PERFORM pg_notify('clinic_webhooks', '');
    RETURN NEXT delivery;
END
$$;

-- Bulk recovery (like Svix's "recover"): everything that finally failed for
-- an endpoint since a time is sent again. Returns how many.
CREATE FUNCTION webhooks.recover(p_endpoint_id bigint, p_since timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE webhooks.deliveries
       SET state = 'pending',
           next_attempt_at = now(),
           retry_base = attempts,
           finished_at = NULL
     WHERE endpoint_id = p_endpoint_id
       AND state = 'failed'
       AND finished_at >= p_since;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('clinic_webhooks', '');
    END IF;
    RETURN n;
END
$$;
