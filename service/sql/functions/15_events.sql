-- I6, history in the same transaction: every status change of a message writes a
-- message_events row, by trigger, so no transition can forget it. The reason travels in the
-- transaction-local setting `wmq.event_detail` (wmq_set_detail).

CREATE FUNCTION wmq_record_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_events (zaap_id, instance_id, from_status, to_status, worker_id, detail)
    VALUES (
        NEW.zaap_id, NEW.instance_id,
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
        NEW.status, NEW.worker_id,
        NULLIF(current_setting('wmq.event_detail', true), '')
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_status_inserted AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION wmq_record_status_change();
CREATE TRIGGER messages_status_changed AFTER UPDATE OF status ON messages
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION wmq_record_status_change();
