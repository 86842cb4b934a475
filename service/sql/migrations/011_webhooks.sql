-- Webhooks (issue 13): where each instance wants its events, the secret they are signed with,
-- and every delivery, written in the same transaction as the change it reports and posted in
-- order per instance by the workers' webhook posters.
CREATE TABLE instance_webhooks (
    instance_id         uuid PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    delivery_url        text,
    message_status_url  text,
    connected_url       text,
    disconnected_url    text,
    secret              text NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    instance_id      uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    event            text NOT NULL CHECK (event IN ('delivery', 'message-status', 'connected', 'disconnected')),
    url              text NOT NULL,
    body             jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    given_up_at      timestamptz
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (instance_id, id)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX webhook_deliveries_instance ON webhook_deliveries (instance_id, id DESC);

-- The connection state a new instance starts in: a simulated instance is online from the start,
-- so that its first disconnect is a DisconnectedCallback like any other.
ALTER TABLE transports ADD COLUMN initial_connection_state text NOT NULL DEFAULT 'unknown';
UPDATE transports SET initial_connection_state = 'connected' WHERE NOT session_bound;
UPDATE instances i SET connection_state = 'connected'
  FROM transports t WHERE t.name = i.transport AND NOT t.session_bound AND i.connection_state = 'unknown';
