-- Current definition of webhooks.endpoints_validate, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- Validates a row with messages meant for the clinic admin, fills in a
-- secret when none is given, and keeps updated_at and the disabled_* pair honest.
CREATE OR REPLACE FUNCTION webhooks.endpoints_validate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unknown text[];
BEGIN
    IF NEW.url IS NULL OR NEW.url !~* '^https?://[^/?#[:space:]]+[^[:space:]]*$' THEN
        RAISE EXCEPTION 'webhooks.endpoints.url must be an absolute http:// or https:// URL, got %',
            coalesce(quote_literal(NEW.url), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'url';
    END IF;
    IF NEW.version IS NULL OR NEW.version NOT IN ('1.0', '2.0') THEN
        RAISE EXCEPTION 'webhooks.endpoints.version must be ''1.0'' or ''2.0'', got %',
            coalesce(quote_literal(NEW.version), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'version';
    END IF;
    IF NEW.event_types IS NOT NULL THEN
        SELECT array_agg(t) INTO unknown
        FROM unnest(NEW.event_types) AS t
        WHERE t IS NULL OR NOT t = ANY (webhooks.event_types());
        IF unknown IS NOT NULL THEN
            RAISE EXCEPTION 'webhooks.endpoints.event_types has unknown event type(s) %; known: %',
                unknown, webhooks.event_types()
                USING ERRCODE = 'check_violation', COLUMN = 'event_types';
        END IF;
    END IF;
    IF NEW.secret IS NULL THEN
        NEW.secret := 'whsec_' || encode(decode(
            replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64');
    ELSIF NEW.secret !~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$' THEN
        -- Never echo the secret itself.
        RAISE EXCEPTION 'webhooks.endpoints.secret must be ''whsec_'' followed by the base64 of 24 to 64 bytes (leave it NULL to generate one)'
            USING ERRCODE = 'check_violation', COLUMN = 'secret';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
        IF NEW.enabled AND NOT OLD.enabled THEN
            -- Re-enabled by an admin: forget the old failure streak.
            NEW.disabled_at := NULL;
            NEW.disabled_reason := NULL;
            NEW.failing_since := NULL;
        ELSIF OLD.enabled AND NOT NEW.enabled AND NEW.disabled_at IS NULL THEN
            NEW.disabled_at := now();
            NEW.disabled_reason := coalesce(NEW.disabled_reason, 'disabled by an administrator');
        END IF;
    END IF;
    RETURN NEW;
END
$$;
