-- Transports as data: the core's SQL routes an instance by its transport's row, never by a
-- transport's name (sql/functions/20_routing.sql). A session-bound transport holds one live
-- connection per instance in one worker process, so its instances are served from that
-- process's queue. A new transport is a row here (by a migration) and a module in
-- workers/transports/.

CREATE TABLE transports (
    name           text PRIMARY KEY,
    session_bound  boolean NOT NULL
);

INSERT INTO transports (name, session_bound) VALUES
    ('simulator', false),
    ('neonize', true);

ALTER TABLE instances
    ADD CONSTRAINT instances_transport_fkey FOREIGN KEY (transport) REFERENCES transports (name);
