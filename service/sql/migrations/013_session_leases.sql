-- Sessions spread over many workers (issue 15): every instance of a session-bound transport is
-- owned by one worker at a time through a lease, with an expiry and a fence that increases on
-- every change of owner (service/sql/functions/25_leases.sql). Replaces the one sessions lock.
CREATE TABLE session_leases (
    instance_id  uuid PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    worker_id    uuid,
    fence        bigint NOT NULL DEFAULT 0,
    expires_at   timestamptz NOT NULL DEFAULT '-infinity',
    changed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_leases_worker ON session_leases (worker_id);

-- Every ownership, from its acquisition to its release or its expiry: no instance may show two
-- owners at one moment (tests/test_leases.py reads it).
CREATE TABLE session_lease_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  uuid NOT NULL,
    worker_id    uuid NOT NULL,
    fence        bigint NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz,
    ended_by     text CHECK (ended_by IN ('released', 'expired', 'removed'))
);
CREATE INDEX session_lease_history_instance ON session_lease_history (instance_id, id);

-- The simulator as a session transport: one owner at a time, like a WhatsApp session, so that
-- ownership is tested end to end without WhatsApp.
INSERT INTO transports (name, session_bound, initial_connection_state) VALUES ('simulator-session', true, 'connected');
