-- Current definition of webhooks.send_test, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
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
