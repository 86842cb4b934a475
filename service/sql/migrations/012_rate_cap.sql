-- An optional cap on the messages an instance accepts per minute (issue 13): a window of one
-- minute from its first accepted message, counted under the instance's queue row lock.
ALTER TABLE instance_queues
    ADD COLUMN max_per_minute integer CHECK (max_per_minute > 0),
    ADD COLUMN rate_window_start timestamptz,
    ADD COLUMN rate_count integer NOT NULL DEFAULT 0;
