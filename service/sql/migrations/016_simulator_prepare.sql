-- The simulator models a call as WhatsApp's is (issue 21): its preparation (upload, encryption,
-- `prepare_ms`) before the frame leaves, the frame recorded, then the wait for the server's
-- answer (`latency_ms`). A worker frozen while preparing must then write nothing; one frozen
-- while waiting for the answer is really uncertain, and the simulator can tell them apart.
ALTER TABLE simulator_instances
    ADD COLUMN prepare_ms integer NOT NULL DEFAULT 0 CHECK (prepare_ms >= 0);
