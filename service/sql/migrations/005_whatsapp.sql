-- Real WhatsApp sessions (the neonize transport): what pairing shows, who the instance is on
-- WhatsApp, and the commands the API leaves for the worker that
-- holds the session.

ALTER TABLE instances
    ADD COLUMN whatsapp_jid text,
    ADD COLUMN qr_code text,
    ADD COLUMN qr_updated_at timestamptz;

-- The API process has no WhatsApp session: it asks the worker that holds it.
CREATE TABLE instance_commands (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    command      text NOT NULL CHECK (command IN ('pair_phone', 'logout', 'restart')),
    args         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz,
    result       jsonb,
    error        text
);
CREATE INDEX instance_commands_pending ON instance_commands (id) WHERE done_at IS NULL;
