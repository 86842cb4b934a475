-- Control from the API: cancel one message or a whole queue, pause and resume an instance,
-- record a connection change, remove an instance. Each takes the instance lock first (I1) and
-- dispatches whatever becomes the head in the same transaction (I2).

-- Cancel one message. Allowed while nothing is being sent; refused for running and sending.
-- Returns the status the message had (NULL if unknown) and whether it was cancelled.
CREATE FUNCTION wmq_cancel(p_zaap text, p_queue text, p_actor text, p_presence_actor text)
RETURNS TABLE (previous_status text, cancelled boolean)
LANGUAGE plpgsql AS $$
DECLARE
    m record;
BEGIN
    PERFORM wmq_lock_instance((SELECT instance_id FROM messages WHERE zaap_id = p_zaap));
    SELECT zaap_id, instance_id, status, dispatch_id, phone INTO m
      FROM messages WHERE zaap_id = p_zaap FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::text, false;
        RETURN;
    END IF;
    IF m.status NOT IN ('scheduled', 'retryable', 'typing') THEN
        RETURN QUERY SELECT m.status, false;
        RETURN;
    END IF;
    PERFORM wmq_set_detail('cancelled by request');
    UPDATE messages SET status = 'cancelled', finished_at = now() WHERE zaap_id = p_zaap;
    DELETE FROM dramatiq.queue WHERE message_id = m.dispatch_id AND state = 'queued';
    IF m.status = 'typing' THEN
        PERFORM wmq_dispatch_presence(m.instance_id, m.phone, 'paused', p_queue, p_presence_actor);
    END IF;
    PERFORM wmq_dispatch_head(m.instance_id, p_queue, p_actor);
    RETURN QUERY SELECT m.status, true;
END
$$;

-- Cancel every pending message of one instance (in-flight ones finish). Returns how many were
-- cancelled, or NULL for an unknown instance.
CREATE FUNCTION wmq_cancel_all(p_instance uuid, p_queue text, p_presence_actor text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    IF NOT wmq_lock_instance(p_instance) THEN
        RETURN NULL;
    END IF;
    PERFORM wmq_set_detail('cancelled by request (whole queue)');
    -- The typing one, if any, must end its presence (read before the update changes it).
    PERFORM wmq_dispatch_presence(p_instance, phone, 'paused', p_queue, p_presence_actor)
       FROM messages WHERE instance_id = p_instance AND status = 'typing';
    WITH cancelled AS (
        UPDATE messages SET status = 'cancelled', finished_at = now()
         WHERE instance_id = p_instance AND status IN ('scheduled', 'retryable', 'typing')
        RETURNING dispatch_id
    ), withdrawn AS (
        DELETE FROM dramatiq.queue q USING cancelled c
         WHERE q.message_id = c.dispatch_id AND q.state = 'queued'
    )
    SELECT count(*) INTO v_count FROM cancelled;
    RETURN v_count;
END
$$;

-- Pause keeps messages and dispatches none (a queued head is withdrawn; a message in flight
-- finishes); resume dispatches the head again. Returns false for an unknown instance.
CREATE FUNCTION wmq_set_paused(p_instance uuid, p_paused boolean, p_queue text, p_actor text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT wmq_lock_instance(p_instance) THEN
        RETURN false;
    END IF;
    UPDATE instances SET paused = p_paused, updated_at = now() WHERE id = p_instance;
    IF p_paused THEN
        DELETE FROM dramatiq.queue q USING messages m
         WHERE m.instance_id = p_instance
           AND m.status IN ('scheduled', 'retryable')
           AND q.message_id = m.dispatch_id AND q.state = 'queued';
    ELSE
        PERFORM wmq_dispatch_head(p_instance, p_queue, p_actor, true);
    END IF;
    RETURN true;
END
$$;

-- An instance's connection changed (a transport event, or the simulator's switch). On
-- connect, a head waiting out a snooze is dispatched again at once (paced as usual) rather
-- than at the next check. Returns false for an unknown instance.
CREATE FUNCTION wmq_set_connection(
    p_instance uuid, p_state text, p_detail text, p_queue text, p_actor text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT wmq_lock_instance(p_instance) THEN
        RETURN false;
    END IF;
    UPDATE instances
       SET connection_state = p_state, connection_detail = p_detail,
           connection_changed_at = now(), updated_at = now()
     WHERE id = p_instance;
    -- A `scheduled` head may sit out a snooze: dispatch it anew (paced, unless paused). A
    -- `retryable` one keeps its backoff.
    IF p_state = 'connected' AND (
           SELECT m.status FROM messages m
            WHERE m.instance_id = p_instance AND wmq_is_unfinished(m.status)
            ORDER BY m.sequence LIMIT 1) = 'scheduled' THEN
        PERFORM wmq_dispatch_head(p_instance, p_queue, p_actor, true);
    END IF;
    RETURN true;
END
$$;

-- Remove an instance with its queue and history, under its lock (I1): its queued broker
-- messages are withdrawn first. With messages still to send, only when forced (they are
-- dropped with it). Returns NULL for an unknown instance, else how many unfinished messages it
-- had (removed: p_force or none pending).
CREATE FUNCTION wmq_remove_instance(p_instance uuid, p_force boolean) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_pending integer;
BEGIN
    IF NOT wmq_lock_instance(p_instance) THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO v_pending FROM messages m
     WHERE m.instance_id = p_instance AND wmq_is_unfinished(m.status);
    IF v_pending > 0 AND NOT p_force THEN
        RETURN v_pending;
    END IF;
    DELETE FROM dramatiq.queue q USING messages m
     WHERE m.instance_id = p_instance AND q.message_id = m.dispatch_id AND q.state = 'queued';
    DELETE FROM instances WHERE id = p_instance;
    RETURN v_pending;
END
$$;
