-- Current definition of webhooks.redeliver_event, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Send an event again: to every endpoint it went to, or to one endpoint
-- (which may have been added after the event: the body is rendered for that
-- endpoint's version). The endpoint must belong to the event's clinic.
CREATE OR REPLACE FUNCTION webhooks.redeliver_event(p_event_id uuid, p_endpoint_id bigint DEFAULT NULL)
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
