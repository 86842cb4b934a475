-- Webhook deliveries: a row per event, written by the change it reports, in its transaction
-- (none lost, none for a change rolled back). Bodies are Z-API's callbacks. Posting is the
-- workers' (workers/webhooks.py); NOTIFY wakes them at once.

-- Queue one event for the instance's URL of that kind, if it has one.
CREATE FUNCTION wmq_webhook(p_instance uuid, p_event text, p_body jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_url text;
    v_next_due timestamptz;
BEGIN
    SELECT u.url INTO v_url FROM instance_webhook_urls u WHERE u.instance_id = p_instance AND u.event = p_event;
    IF v_url IS NULL THEN
        RETURN;
    END IF;
    -- The instance's row is locked before its head state is read (as the claim and the outcome
    -- lock it): an outcome recorded meanwhile, which saw no delivery after its own, would
    -- otherwise leave this one with no due time, and never posted.
    SELECT w.next_due_at INTO v_next_due FROM instance_webhooks w WHERE w.instance_id = p_instance FOR UPDATE;
    INSERT INTO webhook_deliveries (instance_id, event, url, body)
    VALUES (p_instance, p_event, v_url,
            p_body || jsonb_build_object('instanceId', p_instance,
                                         'momment', (extract(epoch FROM now()) * 1000)::bigint));
    IF v_next_due IS NULL THEN  -- it is the head: due now (otherwise it waits behind the head)
        UPDATE instance_webhooks SET next_due_at = now() WHERE instance_id = p_instance;
    END IF;
    PERFORM pg_notify('wmq_webhooks', p_instance::text);
END
$$;

-- After a send: Z-API's DeliveryCallback (also for a discard, with its reason) and a
-- MessageStatusCallback SENT. A cancelled message reports nothing.
CREATE FUNCTION wmq_message_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'completed' THEN
        PERFORM wmq_webhook(NEW.instance_id, 'delivery', jsonb_build_object(
            'type', 'DeliveryCallback', 'phone', NEW.phone, 'zaapId', NEW.zaap_id,
            'messageId', NEW.whatsapp_message_id));
        PERFORM wmq_webhook(NEW.instance_id, 'message-status', jsonb_build_object(
            'type', 'MessageStatusCallback', 'status', 'SENT', 'ids', jsonb_build_array(NEW.whatsapp_message_id),
            'phone', NEW.phone, 'zaapId', NEW.zaap_id, 'isGroup', NEW.phone LIKE '%-group' OR NEW.phone LIKE '%@g.us'));
    ELSIF NEW.status = 'discarded' THEN
        PERFORM wmq_webhook(NEW.instance_id, 'delivery', jsonb_build_object(
            'type', 'DeliveryCallback', 'phone', NEW.phone, 'zaapId', NEW.zaap_id, 'messageId', NULL,
            'error', COALESCE(NEW.last_error, 'discarded')));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_status_webhooks AFTER UPDATE OF status ON messages
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('completed', 'discarded'))
    EXECUTE FUNCTION wmq_message_webhooks();

-- Receipts from the phone: MessageStatusCallback RECEIVED, READ or PLAYED, once per message and
-- kind (the receipt columns move from NULL).
CREATE FUNCTION wmq_receipt_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.delivered_at IS NOT NULL AND OLD.delivered_at IS NULL THEN
        PERFORM wmq_webhook(NEW.instance_id, 'message-status', jsonb_build_object(
            'type', 'MessageStatusCallback', 'status', 'RECEIVED', 'ids', jsonb_build_array(NEW.whatsapp_message_id),
            'phone', NEW.phone, 'zaapId', NEW.zaap_id, 'isGroup', false));
    END IF;
    IF NEW.read_at IS NOT NULL AND OLD.read_at IS NULL THEN
        PERFORM wmq_webhook(NEW.instance_id, 'message-status', jsonb_build_object(
            'type', 'MessageStatusCallback', 'status', 'READ', 'ids', jsonb_build_array(NEW.whatsapp_message_id),
            'phone', NEW.phone, 'zaapId', NEW.zaap_id, 'isGroup', false));
    END IF;
    IF NEW.played_at IS NOT NULL AND OLD.played_at IS NULL THEN
        PERFORM wmq_webhook(NEW.instance_id, 'message-status', jsonb_build_object(
            'type', 'MessageStatusCallback', 'status', 'PLAYED', 'ids', jsonb_build_array(NEW.whatsapp_message_id),
            'phone', NEW.phone, 'zaapId', NEW.zaap_id, 'isGroup', false));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_status_receipt_webhooks AFTER UPDATE OF delivered_at, read_at, played_at ON messages
    FOR EACH ROW EXECUTE FUNCTION wmq_receipt_webhooks();

-- Connection changes: ConnectedCallback when an instance comes online, DisconnectedCallback
-- (with the reason) when it leaves `connected`.
CREATE FUNCTION wmq_connection_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.connection_state = 'connected' AND OLD.connection_state IS DISTINCT FROM 'connected' THEN
        PERFORM wmq_webhook(NEW.id, 'connected', jsonb_build_object(
            'type', 'ConnectedCallback', 'connected', true, 'phone', NEW.whatsapp_jid));
    ELSIF OLD.connection_state = 'connected' AND NEW.connection_state IS DISTINCT FROM 'connected' THEN
        PERFORM wmq_webhook(NEW.id, 'disconnected', jsonb_build_object(
            'type', 'DisconnectedCallback', 'disconnected', true, 'error', NEW.connection_detail));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER wmq_instance_connection_webhooks AFTER UPDATE OF connection_state ON instances
    FOR EACH ROW EXECUTE FUNCTION wmq_connection_webhooks();

-- An instance's webhook URLs set (a URL per event of `p_urls`; JSON null removes that event's),
-- the others kept; the signing secret made with the first setting (`p_secret`) and kept. The
-- instance's settings row, its URLs and its secret.
CREATE FUNCTION wmq_set_webhooks(p_instance uuid, p_urls jsonb, p_secret text)
RETURNS TABLE (secret text, previous_secret_until timestamptz, urls jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO instance_webhooks (instance_id, secret) VALUES (p_instance, p_secret)
    ON CONFLICT (instance_id) DO UPDATE SET updated_at = now();
    DELETE FROM instance_webhook_urls u
     USING jsonb_each(p_urls) AS e (event, url)
     WHERE u.instance_id = p_instance AND u.event = e.event AND jsonb_typeof(e.url) = 'null';
    INSERT INTO instance_webhook_urls (instance_id, event, url)
    SELECT p_instance, e.event, e.url #>> '{}' FROM jsonb_each(p_urls) AS e (event, url)
     WHERE jsonb_typeof(e.url) = 'string'
    ON CONFLICT (instance_id, event) DO UPDATE SET url = EXCLUDED.url, updated_at = now();
    RETURN QUERY SELECT * FROM wmq_webhook_settings(p_instance);
END
$$;

-- An instance's webhook settings: its secret, until when the previous one signs too, and its
-- URLs by event. No row when it never had any.
CREATE FUNCTION wmq_webhook_settings(p_instance uuid)
RETURNS TABLE (secret text, previous_secret_until timestamptz, urls jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
        SELECT w.secret, w.previous_secret_until,
               coalesce((SELECT jsonb_object_agg(u.event, u.url) FROM instance_webhook_urls u
                          WHERE u.instance_id = w.instance_id), '{}')
          FROM instance_webhooks w WHERE w.instance_id = p_instance;
END
$$;

-- A receiver, as the posters count it (concurrency cap, circuit): the URL's host and port as
-- written, lower-cased, without the user part.
CREATE FUNCTION wmq_webhook_origin(p_url text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT lower(substring(p_url, '^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?([^/?#]+)'))
$$;

-- The poster's claim of an instance's next delivery: the oldest pending one, if it is due and no
-- other poster holds the instance. The claim is the attempt's record, made before the POST: the
-- attempt is counted, `posting_since` set, and the delivery held (not due) for `p_hold_s`, the
-- post's whole deadline and a margin; the transaction ends before the POST, so no lock or
-- transaction spans the receiver's answer, and the instance's later deliveries wait behind the
-- held one (order kept). A claim found on a delivery whose previous claim got no outcome counts
-- it in `unfinished_attempts`: its poster died mid-post.
CREATE FUNCTION wmq_webhook_claim(p_instance uuid, p_hold_s double precision)
RETURNS TABLE (id bigint, event text, url text, origin text, body jsonb, attempts integer, created_at timestamptz,
               unfinished_attempts integer, secret text, previous_secret text)
LANGUAGE plpgsql ROWS 1 AS $$
DECLARE
    v_settings instance_webhooks%ROWTYPE;
    v_head bigint;
BEGIN
    SELECT * INTO v_settings FROM instance_webhooks w WHERE w.instance_id = p_instance FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;  -- another poster is claiming (or the instance is gone)
    END IF;
    SELECT min(p.id) INTO v_head FROM webhook_deliveries p
     WHERE p.instance_id = p_instance AND p.delivered_at IS NULL AND p.given_up_at IS NULL;
    RETURN QUERY
        UPDATE webhook_deliveries d
           SET attempts = d.attempts + 1, last_attempt_at = now(),
               unfinished_attempts = d.unfinished_attempts + (d.posting_since IS NOT NULL)::integer,
               posting_since = now(), next_attempt_at = now() + make_interval(secs => p_hold_s)
         WHERE d.id = v_head AND d.next_attempt_at <= now()
        RETURNING d.id, d.event, d.url, wmq_webhook_origin(d.url), d.body, d.attempts, d.created_at,
                  d.unfinished_attempts, v_settings.secret,
                  CASE WHEN v_settings.previous_secret_until > now() THEN v_settings.previous_secret END;
    IF FOUND THEN  -- the head is held: the instance is due again when the hold ends
        UPDATE instance_webhooks w SET next_due_at = now() + make_interval(secs => p_hold_s)
         WHERE w.instance_id = p_instance;
    END IF;
END
$$;

-- The outcome of a claimed attempt, fenced by its attempt number (a poster that stood still past
-- its hold, while another took the delivery up again, records nothing): delivered, or failed and
-- tried again after `p_backoff_s`, or given up. The instance's head then moves on (or waits for
-- its backoff), and the posters are woken for it. Whether the outcome was recorded.
CREATE FUNCTION wmq_webhook_outcome(p_id bigint, p_attempt integer, p_status integer, p_error text,
                                    p_delivered boolean, p_backoff_s double precision, p_give_up boolean)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_instance uuid;
BEGIN
    -- The instance's row first, as the claim takes it (no deadlock with a claim of the same
    -- delivery by a poster whose hold has passed), and so that the head read below sees every
    -- delivery committed before the lock.
    SELECT d.instance_id INTO v_instance FROM webhook_deliveries d WHERE d.id = p_id;
    PERFORM 1 FROM instance_webhooks w WHERE w.instance_id = v_instance FOR UPDATE;
    UPDATE webhook_deliveries d
       SET last_status = p_status, last_error = p_error, posting_since = NULL,
           delivered_at = CASE WHEN p_delivered THEN now() END,
           given_up_at = CASE WHEN p_give_up AND NOT p_delivered THEN now() END,
           next_attempt_at = CASE WHEN p_delivered OR p_give_up THEN d.next_attempt_at
                                  ELSE now() + make_interval(secs => p_backoff_s) END
     WHERE d.id = p_id AND d.attempts = p_attempt AND d.delivered_at IS NULL AND d.given_up_at IS NULL;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE instance_webhooks w SET next_due_at = (
        SELECT d.next_attempt_at FROM webhook_deliveries d
         WHERE d.instance_id = v_instance AND d.delivered_at IS NULL AND d.given_up_at IS NULL
         ORDER BY d.id LIMIT 1)
     WHERE w.instance_id = v_instance;
    PERFORM pg_notify('wmq_webhooks', v_instance::text);
    RETURN true;
END
$$;
