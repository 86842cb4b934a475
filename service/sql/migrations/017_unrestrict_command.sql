-- `unrestrict` (issue 21): the API's resume asks the session's holder to try the head of an
-- instance restricted by WhatsApp's reach-out time-lock (463) now, not at the restriction's next try.
ALTER TABLE instance_commands DROP CONSTRAINT IF EXISTS instance_commands_command_check;
ALTER TABLE instance_commands ADD CONSTRAINT instance_commands_command_check
    CHECK (command IN ('pair', 'pair_phone', 'logout', 'restart', 'unrestrict'));
