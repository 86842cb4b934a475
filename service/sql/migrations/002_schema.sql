-- Instances, their queues, messages and the append-only history of every status change.

CREATE TABLE instances (
    id                      uuid PRIMARY KEY,
    token                   text NOT NULL,
    client_token            text,
    name                    text NOT NULL DEFAULT '',
    transport               text NOT NULL DEFAULT 'simulator',
    paused                  boolean NOT NULL DEFAULT false,
    -- Minimum time between two sends of this instance, on top of the delays (a ban guard);
    -- set at creation from WHATSAPP_MIN_SEND_INTERVAL.
    min_send_interval_ms    bigint NOT NULL DEFAULT 0 CHECK (min_send_interval_ms >= 0),
    -- Connection state as the owning worker last saw it (DESIGN.md §4).
    connection_state        text NOT NULL DEFAULT 'unknown',
    connection_detail       text,
    connection_changed_at   timestamptz,
    -- Ownership lease: which worker process holds the WhatsApp session (§4).
    owner_worker_id         uuid,
    owner_lease_token       bigint NOT NULL DEFAULT 0,
    owner_lease_expires_at  timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- The seed's message_sequences: one row per instance, locked by every transaction that can
-- change which message is the head (rule R1).
CREATE TABLE instance_queues (
    instance_id        uuid PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    last_sequence      bigint NOT NULL DEFAULT 0,
    last_scheduled_at  timestamptz,
    last_sent_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    zaap_id              text PRIMARY KEY CHECK (zaap_id ~ '^[0-9a-f]{32}$'),
    instance_id          uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    sequence             bigint NOT NULL,
    message_type         text NOT NULL,
    phone                text NOT NULL,
    payload              jsonb NOT NULL,
    delay_message_ms     bigint NOT NULL DEFAULT 0 CHECK (delay_message_ms >= 0),
    delay_typing_ms      bigint NOT NULL DEFAULT 0 CHECK (delay_typing_ms >= 0),
    -- The random spacing drawn at enqueue, reused when pacing after a backlog (§3.5).
    jitter_ms            bigint NOT NULL DEFAULT 0 CHECK (jitter_ms >= 0),
    -- The chained due time (§3.1): when the message is expected to go, shown to users.
    scheduled_at         timestamptz NOT NULL,
    -- The message's own earliest time: GREATEST(scheduledFor, accepted + delay). Dispatch uses
    -- it with the previous send (§3.5), so that cancelling a delayed message does not hold
    -- back its successors by the delay it no longer has.
    not_before           timestamptz NOT NULL,
    status               text NOT NULL CHECK (status IN (
                             'scheduled', 'running', 'typing', 'sending',
                             'completed', 'cancelled', 'discarded', 'retryable')),
    attempts             integer NOT NULL DEFAULT 0,
    max_attempts         integer NOT NULL,
    last_error           text,
    whatsapp_message_id  text,
    enqueued_at          timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    sent_at              timestamptz,
    finished_at          timestamptz,
    idempotency_key      text,
    resolved_jid         text,
    -- Dispatch columns (R2, R3): the live broker message, how many dispatches so far, which
    -- phase it runs (1 presence, 2 send), the ownership fence it was routed under, and the
    -- worker (broker worker_id) that claimed it.
    dispatch_id          uuid,
    available_at         timestamptz,
    attempt              integer NOT NULL DEFAULT 0,
    phase                smallint,
    fence                bigint NOT NULL DEFAULT 0,
    worker_id            uuid,
    UNIQUE (instance_id, sequence),
    UNIQUE (instance_id, idempotency_key)
);

-- R3: at most one message of an instance in flight, enforced, not hoped for.
CREATE UNIQUE INDEX messages_one_in_flight ON messages (instance_id)
    WHERE status IN ('running', 'typing', 'sending');

-- "The head of instance X" is one probe: the lowest unfinished sequence.
CREATE INDEX messages_unfinished ON messages (instance_id, sequence)
    WHERE status IN ('scheduled', 'retryable', 'running', 'typing', 'sending');

-- Retention and the failed-jobs view walk finished rows by time.
CREATE INDEX messages_finished_at ON messages (finished_at) WHERE finished_at IS NOT NULL;

-- I6: append-only history of every status change, written by trigger in the same transaction
-- as the change itself.
CREATE TABLE message_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    zaap_id      text NOT NULL REFERENCES messages (zaap_id) ON DELETE CASCADE,
    instance_id  uuid NOT NULL,
    from_status  text,
    to_status    text NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    worker_id    uuid,
    detail       text
);
CREATE INDEX message_events_zaap_id ON message_events (zaap_id, id);

-- The trigger that writes it: sql/functions/15_events.sql.

-- The simulator transport's state and record (the WhatsApp network edge in tests and demos).
CREATE TABLE simulator_instances (
    instance_id  uuid PRIMARY KEY,
    connected    boolean NOT NULL DEFAULT true,
    fail_next    integer NOT NULL DEFAULT 0 CHECK (fail_next >= 0),
    -- How the next `fail_next` sends fail: 'retryable' (a timeout, say) or 'permanent'
    -- (an invalid number).
    fail_mode    text NOT NULL DEFAULT 'retryable' CHECK (fail_mode IN ('retryable', 'permanent')),
    latency_ms   integer NOT NULL DEFAULT 0 CHECK (latency_ms >= 0)
);

CREATE TABLE simulator_events (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id          uuid NOT NULL,
    kind                 text NOT NULL,  -- 'presence' or 'send'
    phone                text NOT NULL,
    presence             text,           -- composing, recording, paused
    zaap_id              text,
    payload              jsonb,
    whatsapp_message_id  text,
    started_at           timestamptz NOT NULL,
    ended_at             timestamptz NOT NULL
);
CREATE INDEX simulator_events_instance ON simulator_events (instance_id, id);
