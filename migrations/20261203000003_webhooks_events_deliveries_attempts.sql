-- The queue and its history.
--
--   events      one row per domain change, with the row snapshot as of the change
--   deliveries  one row per (event, endpoint): the unit of work the worker claims
--   attempts    append-only, one row per HTTP call (or per lost lease)
--
-- A delivery moves pending -> delivering -> succeeded | failed, and back to
-- pending when an attempt fails and another is due (see README, "Delivery states").

-- Time-ordered (version 7) UUIDs: new events land on the right edge of the
-- indexes over them instead of on random pages, which keeps the triggers'
-- index inserts (and the WAL they write after a checkpoint) small.
CREATE FUNCTION webhooks.uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

CREATE TABLE webhooks.events (
    id         uuid PRIMARY KEY DEFAULT webhooks.uuid_v7(),
    type       text NOT NULL,
    clinic_id  bigint NOT NULL,
    -- Lane key: events with the same subject reach an endpoint in commit order.
    subject    text NOT NULL,
    -- Version-neutral copy of the row(s) as of the change; rendered to v1/v2 at delivery.
    snapshot   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE webhooks.delivery_state AS ENUM ('pending', 'delivering', 'succeeded', 'failed');

CREATE TABLE webhooks.deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- event_id and endpoint_id carry no foreign keys: their checks would run
    -- in every writing transaction of the app, and the one on the endpoint
    -- locks its row FOR KEY SHARE, so concurrent writers of one clinic would
    -- contend on it (multixacts). Only the triggers and the redelivery
    -- functions insert here, always with an event they just read or wrote;
    -- deleting an endpoint deletes its deliveries (webhooks.endpoints_deleted).
    event_id         uuid NOT NULL,
    endpoint_id      bigint NOT NULL,
    subject          text NOT NULL,
    state            webhooks.delivery_state NOT NULL DEFAULT 'pending',
    -- Attempts started so far; also the fencing token of the current lease.
    attempts         integer NOT NULL DEFAULT 0,
    -- The retry schedule restarts at a redelivery: position = attempts - retry_base.
    retry_base       integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    leased_by        text,
    last_status      smallint,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT deliveries_lease_iff_delivering
        CHECK ((state = 'delivering') = (lease_expires_at IS NOT NULL)),
    CONSTRAINT deliveries_finished_iff_final
        CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL))
);

-- Claim: due deliveries of one endpoint, oldest due first; first attempts
-- and retries apart, so that retries cannot starve first attempts.
CREATE INDEX deliveries_first_attempts_due
    ON webhooks.deliveries (endpoint_id, next_attempt_at, id)
    WHERE state = 'pending' AND attempts = retry_base;
CREATE INDEX deliveries_retries_due
    ON webhooks.deliveries (endpoint_id, next_attempt_at, id)
    WHERE state = 'pending' AND attempts > retry_base;
-- Lanes: is there an earlier unfinished delivery of this subject for this endpoint?
CREATE INDEX deliveries_unfinished_by_lane
    ON webhooks.deliveries (endpoint_id, subject, id) WHERE state IN ('pending', 'delivering');
-- Bulkheads and lease recovery: what is in flight, and until when.
CREATE INDEX deliveries_delivering_by_endpoint
    ON webhooks.deliveries (endpoint_id, lease_expires_at) WHERE state = 'delivering';
CREATE INDEX deliveries_by_event ON webhooks.deliveries (event_id);
-- Bulk recovery: failed deliveries of an endpoint since a time.
CREATE INDEX deliveries_failed_by_endpoint
    ON webhooks.deliveries (endpoint_id, finished_at) WHERE state = 'failed';

-- What ON DELETE CASCADE foreign keys would have done.
CREATE FUNCTION webhooks.endpoints_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhooks.attempts a USING old_rows o WHERE a.endpoint_id = o.id;
    DELETE FROM webhooks.deliveries d USING old_rows o WHERE d.endpoint_id = o.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER endpoints_deleted
    AFTER DELETE ON webhooks.endpoints
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.endpoints_deleted();

CREATE TYPE webhooks.attempt_outcome AS ENUM ('succeeded', 'retrying', 'failed', 'abandoned');

CREATE TABLE webhooks.attempts (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key: only the worker writes here, always for a delivery it
    -- holds; a per-row check would cost every batch one trigger call per row.
    delivery_id        bigint NOT NULL,
    -- Copied from the delivery, so the log of one endpoint is one index range.
    endpoint_id        bigint NOT NULL,
    attempt            integer NOT NULL CONSTRAINT attempts_attempt_positive CHECK (attempt >= 1),
    started_at         timestamptz NOT NULL,
    duration_ms        double precision,
    url                text NOT NULL,
    -- Exactly what was sent; NULL only for an abandoned (lost-lease) attempt.
    request_headers    jsonb,
    request_body       text,
    response_status    smallint,
    response_headers   jsonb,
    -- Truncated at http.max_response_body_bytes; response_truncated says so.
    response_body      text,
    response_truncated boolean NOT NULL DEFAULT false,
    outcome            webhooks.attempt_outcome NOT NULL,
    error_kind         text
        CONSTRAINT attempts_error_kind_known CHECK (error_kind IN (
            'timeout', 'dns', 'connect', 'tls', 'status', 'redirect', 'body',
            'refused_target', 'lease_expired', 'internal')),
    error              text,
    -- When the next attempt is due, for outcome 'retrying'.
    next_attempt_at    timestamptz,
    worker             text,
    CONSTRAINT attempts_error_kind_iff_not_succeeded
        CHECK ((outcome = 'succeeded') = (error_kind IS NULL))
);
CREATE INDEX attempts_by_delivery ON webhooks.attempts (delivery_id, attempt);
CREATE INDEX attempts_by_endpoint_time ON webhooks.attempts (endpoint_id, started_at);
