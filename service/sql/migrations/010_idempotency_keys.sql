-- Idempotent sends (issue 13): the first answer to a send with an `Idempotency-Key`, kept for
-- 24 hours whatever happens to the message itself (retention may purge it sooner).
CREATE TABLE idempotency_keys (
    instance_id   uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    zaap_id       text NOT NULL,
    sequence      bigint NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    status        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
