-- Pairing starts when someone asks for a QR code (issue 12): the API leaves a `pair` command
-- for the worker holding the session, beside `pair_phone`, `logout` and `restart`.
ALTER TABLE instance_commands DROP CONSTRAINT IF EXISTS instance_commands_command_check;
ALTER TABLE instance_commands ADD CONSTRAINT instance_commands_command_check
    CHECK (command IN ('pair', 'pair_phone', 'logout', 'restart'));
