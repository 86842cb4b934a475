-- The queue's state machine. Every function that can change which message is an instance's
-- head takes that instance's instance_queues row lock first (rule R1), and dispatches the
-- head itself, in the caller's transaction (rule R2). Status changes are recorded in
-- message_events by trigger (rule R6); `wmq.event_detail` carries the reason.

-- The statuses that keep a message in its instance's queue (it blocks every later one).
CREATE FUNCTION wmq_is_unfinished(p_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_status IN ('scheduled', 'retryable', 'running', 'typing', 'sending')
$$;

CREATE FUNCTION wmq_ms(p_ms bigint) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_interval(secs => p_ms / 1000.0)
$$;

CREATE FUNCTION wmq_set_detail(p_detail text) RETURNS void
LANGUAGE sql AS $$
    SELECT set_config('wmq.event_detail', COALESCE(p_detail, ''), true)
$$;

-- R1: lock an instance's queue row. Returns false when the instance does not exist.
CREATE FUNCTION wmq_lock_instance(p_instance uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM instance_queues WHERE instance_id = p_instance FOR UPDATE;
    RETURN FOUND;
END
$$;

-- The seed's sequence function: hands out the next sequence under the row lock (R1) and the
-- chained due time (DESIGN.md §3.1):
--   GREATEST(previous + delay + jitter, scheduled_for, now() + delay)
-- where `previous` is the due time of the last message still waiting, or else the last send:
-- a cancelled or discarded message no longer pushes the chain. The chain is read after the
-- lock is taken (a statement of its own, so it sees what the lock holder committed).
CREATE FUNCTION get_next_message_sequence(
    p_instance uuid,
    p_delay_ms bigint DEFAULT 0,
    p_jitter_ms bigint DEFAULT 0,
    p_scheduled_for timestamptz DEFAULT NULL,
    OUT sequence bigint,
    OUT scheduled_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE instance_queues q SET last_sequence = q.last_sequence + 1
     WHERE q.instance_id = p_instance
 RETURNING q.last_sequence INTO sequence;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    scheduled_at := GREATEST(
        COALESCE(
            (SELECT m.scheduled_at FROM messages m
              WHERE m.instance_id = p_instance AND wmq_is_unfinished(m.status)
              ORDER BY m.sequence DESC LIMIT 1),
            (SELECT q.last_sent_at FROM instance_queues q WHERE q.instance_id = p_instance)
        ) + wmq_ms(p_delay_ms + p_jitter_ms),
        p_scheduled_for,
        now() + wmq_ms(p_delay_ms));
    IF scheduled_at > now() + interval '100 years' THEN
        RAISE EXCEPTION 'the chained due time is more than 100 years away'
            USING ERRCODE = 'datetime_field_overflow';
    END IF;
    UPDATE instance_queues q SET last_scheduled_at = scheduled_at WHERE q.instance_id = p_instance;
END
$$;

-- Which broker queue an instance's dispatches go to. Real WhatsApp sessions live in one worker
-- process (workers/transports/neonize/manager.py): their messages go to the `-sessions` queue,
-- which only that worker consumes; simulator instances use the shared queue.
CREATE FUNCTION wmq_queue_for(p_instance uuid, p_queue text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT p_queue || CASE WHEN i.transport = 'neonize' THEN '-sessions' ELSE '' END
      FROM instances i WHERE i.id = p_instance
$$;

-- R2: put one message into the broker, as a row of dramatiq-postgres' own table, in the
-- caller's transaction. The broker message carries ids only; its message_id is the dispatch
-- id, a name-based UUID of (zaap_id, attempt, phase, fence), stored on the message so that
-- the claim (R3) can tell the live dispatch from a stale one. A previous dispatch that is
-- still queued is withdrawn.
CREATE FUNCTION wmq_dispatch(
    p_zaap text, p_phase smallint, p_available_at timestamptz, p_queue text, p_actor text)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_new uuid;
    v_old uuid;
    v_queue text;
BEGIN
    UPDATE messages m
       SET attempt = m.attempt + 1,
           phase = p_phase,
           available_at = p_available_at,
           dispatch_id = md5(m.zaap_id || ':' || (m.attempt + 1) || ':' || p_phase || ':' || m.fence)::uuid
      FROM messages old
     WHERE m.zaap_id = p_zaap AND old.zaap_id = p_zaap
 RETURNING m.dispatch_id, old.dispatch_id, wmq_queue_for(m.instance_id, p_queue) INTO v_new, v_old, v_queue;

    IF v_old IS NOT NULL THEN
        DELETE FROM dramatiq.queue WHERE message_id = v_old AND state = 'queued';
    END IF;

    INSERT INTO dramatiq.queue (queue_name, message_id, state, message, available_at)
    VALUES (
        v_queue, v_new, 'queued',
        jsonb_build_object(
            'queue_name', v_queue,
            'actor_name', p_actor,
            'args', jsonb_build_array(p_zaap, p_phase),
            'kwargs', '{}'::jsonb,
            'options', '{}'::jsonb,
            'message_id', v_new::text,
            'message_timestamp', (extract(epoch FROM clock_timestamp()) * 1000)::bigint),
        p_available_at)
    ON CONFLICT (message_id) DO NOTHING;

    -- Delivered at commit. A future message wakes the due-time waker instead, which notifies
    -- the queue when the message falls due (workers/waker.py); the consumers' poll is the
    -- fallback. Notifications are folded per transaction, so a burst costs one.
    IF p_available_at <= now() THEN
        PERFORM pg_notify('dramatiq.' || v_queue || '.enqueue', '');
    ELSE
        PERFORM pg_notify('wmq.due', '');
    END IF;
    RETURN v_new;
END
$$;

-- When a head may go, given the previous send: its own earliest time, the previous send plus
-- its delay and jitter, and the previous send plus the instance's minimum spacing.
CREATE FUNCTION wmq_paced_at(p_instance uuid, p_not_before timestamptz, p_delay_ms bigint, p_jitter_ms bigint)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT GREATEST(p_not_before,
                    q.last_sent_at + wmq_ms(p_delay_ms + p_jitter_ms),
                    q.last_sent_at + wmq_ms(i.min_send_interval_ms))
      FROM instance_queues q JOIN instances i ON i.id = q.instance_id
     WHERE q.instance_id = p_instance
$$;

-- Ask a worker to show a presence (a cancelled message's "typing…" must end with `paused`). It
-- carries no message: the ordering middleware lets it through without a claim.
CREATE FUNCTION wmq_dispatch_presence(
    p_instance uuid, p_phone text, p_presence text, p_queue text, p_actor text)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := gen_random_uuid();
    v_queue text := wmq_queue_for(p_instance, p_queue);
BEGIN
    INSERT INTO dramatiq.queue (queue_name, message_id, state, message, available_at)
    VALUES (
        v_queue, v_id, 'queued',
        jsonb_build_object(
            'queue_name', v_queue,
            'actor_name', p_actor,
            'args', jsonb_build_array(p_instance::text, p_phone, p_presence),
            'kwargs', '{}'::jsonb,
            'options', '{}'::jsonb,
            'message_id', v_id::text,
            'message_timestamp', (extract(epoch FROM clock_timestamp()) * 1000)::bigint),
        now());
    PERFORM pg_notify('dramatiq.' || v_queue || '.enqueue', '');
    RETURN v_id;
END
$$;

-- Dispatch the head of an instance if it is waiting to be dispatched: the lowest unfinished
-- sequence, not in flight, not already in the broker, and the instance not paused. It is due
-- at its own earliest time, and never before sent_at(previous) + delay + jitter: pacing holds
-- after a backlog. While every predecessor is sent this equals the chained scheduled_at or
-- later; after a cancel or a discard it is earlier, as it should be.
-- The caller holds the instance lock (R1). With p_redispatch, a head already in the broker is
-- dispatched anew (its old broker row withdrawn): resume uses it, since a paused head's broker
-- message may have been consumed and skipped meanwhile. Returns the dispatched zaap_id, or NULL.
CREATE FUNCTION wmq_dispatch_head(
    p_instance uuid, p_queue text, p_actor text, p_redispatch boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    h record;
BEGIN
    SELECT m.zaap_id, m.status, m.dispatch_id, m.not_before, m.delay_message_ms, m.jitter_ms
      INTO h
      FROM messages m
     WHERE m.instance_id = p_instance AND wmq_is_unfinished(m.status)
     ORDER BY m.sequence
     LIMIT 1;
    IF NOT FOUND OR h.status NOT IN ('scheduled', 'retryable')
       OR (h.dispatch_id IS NOT NULL AND NOT p_redispatch) THEN
        RETURN NULL;
    END IF;

    IF (SELECT i.paused FROM instances i WHERE i.id = p_instance) THEN
        RETURN NULL;
    END IF;

    PERFORM wmq_dispatch(
        h.zaap_id, 1::smallint,
        wmq_paced_at(p_instance, h.not_before, h.delay_message_ms, h.jitter_ms),
        p_queue, p_actor);
    RETURN h.zaap_id;
END
$$;

-- §3.1: accept one message. One transaction: lock and sequence, insert, dispatch if head.
CREATE FUNCTION wmq_enqueue(
    p_zaap text, p_instance uuid, p_type text, p_phone text, p_payload jsonb,
    p_delay_ms bigint, p_typing_ms bigint, p_jitter_ms bigint, p_scheduled_for timestamptz,
    p_max_attempts integer, p_queue text, p_actor text)
RETURNS TABLE (sequence bigint, scheduled_at timestamptz, status text)
LANGUAGE plpgsql AS $$
DECLARE
    n record;
BEGIN
    SELECT * INTO n FROM get_next_message_sequence(p_instance, p_delay_ms, p_jitter_ms, p_scheduled_for);
    IF n.sequence IS NULL THEN
        RAISE EXCEPTION 'unknown instance %', p_instance USING ERRCODE = 'no_data_found';
    END IF;

    PERFORM wmq_set_detail(NULL);
    INSERT INTO messages (
        zaap_id, instance_id, sequence, message_type, phone, payload,
        delay_message_ms, delay_typing_ms, jitter_ms, scheduled_at, not_before, status, max_attempts)
    VALUES (
        p_zaap, p_instance, n.sequence, p_type, p_phone, p_payload,
        p_delay_ms, p_typing_ms, p_jitter_ms, n.scheduled_at,
        GREATEST(p_scheduled_for, now() + wmq_ms(p_delay_ms)), 'scheduled', p_max_attempts);

    -- `available`: dispatched and due (waiting for a worker thread); else `scheduled`.
    RETURN QUERY SELECT n.sequence, n.scheduled_at,
        CASE WHEN wmq_dispatch_head(p_instance, p_queue, p_actor) IS NOT NULL
                  AND n.scheduled_at <= now()
             THEN 'available' ELSE 'scheduled' END;
END
$$;

-- R3: claim a dispatched message for one worker, in one statement under the instance lock.
-- Zero rows means the broker message is stale (another dispatch replaced it, the message was
-- cancelled or is already done): the caller skips it. The head check makes "never before an
-- earlier message is finished" hold even if a dispatch were wrong.
CREATE FUNCTION wmq_claim(p_zaap text, p_dispatch uuid, p_worker uuid)
RETURNS SETOF messages
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wmq_lock_instance((SELECT instance_id FROM messages WHERE zaap_id = p_zaap));
    PERFORM wmq_set_detail(NULL);
    RETURN QUERY
    UPDATE messages m
       SET status = 'running',
           worker_id = p_worker,
           started_at = COALESCE(m.started_at, now())
     WHERE m.zaap_id = p_zaap
       AND m.dispatch_id = p_dispatch
       AND m.status IN ('scheduled', 'retryable', 'typing')
       AND (m.status = 'typing'
            OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = m.instance_id AND i.paused))
       AND NOT EXISTS (
            SELECT 1 FROM messages p
             WHERE p.instance_id = m.instance_id
               AND p.sequence < m.sequence
               AND wmq_is_unfinished(p.status))
    RETURNING m.*;
END
$$;

-- §3.4 phase 1 done: presence shown; release the thread and come back after delayTyping.
CREATE FUNCTION wmq_start_typing(p_zaap text, p_worker uuid, p_queue text, p_actor text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_typing_ms bigint;
BEGIN
    PERFORM wmq_lock_instance((SELECT instance_id FROM messages WHERE zaap_id = p_zaap));
    PERFORM wmq_set_detail(NULL);
    UPDATE messages SET status = 'typing'
     WHERE zaap_id = p_zaap AND status = 'running' AND worker_id = p_worker
    RETURNING delay_typing_ms INTO v_typing_ms;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM wmq_dispatch(p_zaap, 2::smallint, now() + wmq_ms(v_typing_ms), p_queue, p_actor);
    RETURN true;
END
$$;

-- §1.7: mark the message as being sent before the WhatsApp call, so a crash leaves it
-- visibly uncertain. `attempts` counts send attempts, this one included. Does not change the
-- head: no instance lock needed.
CREATE FUNCTION wmq_mark_sending(p_zaap text, p_worker uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wmq_set_detail(NULL);
    UPDATE messages SET status = 'sending', attempts = attempts + 1
     WHERE zaap_id = p_zaap AND status = 'running' AND worker_id = p_worker;
    RETURN FOUND;
END
$$;

-- §3.5: the send succeeded. Record it and dispatch the next head, paced from this send.
CREATE FUNCTION wmq_complete(
    p_zaap text, p_worker uuid, p_whatsapp_id text, p_queue text, p_actor text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_instance uuid;
BEGIN
    v_instance := (SELECT instance_id FROM messages WHERE zaap_id = p_zaap);
    PERFORM wmq_lock_instance(v_instance);
    PERFORM wmq_set_detail('whatsapp id ' || p_whatsapp_id);
    UPDATE messages
       SET status = 'completed', whatsapp_message_id = p_whatsapp_id,
           sent_at = now(), finished_at = now()
     WHERE zaap_id = p_zaap AND status = 'sending' AND worker_id = p_worker;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE instance_queues SET last_sent_at = now() WHERE instance_id = v_instance;
    PERFORM wmq_dispatch_head(v_instance, p_queue, p_actor);
    RETURN true;
END
$$;

-- §3.6: a failed attempt. Retryable errors stay head and come back after the backoff; the
-- last allowed attempt, or a permanent error, discards the message and lets the next go.
-- A failure before the send (status running: the presence, say) counts as an attempt too,
-- so that nothing retries forever. Returns the new status, or NULL when the message was not
-- this worker's any more.
CREATE FUNCTION wmq_fail(
    p_zaap text, p_worker uuid, p_error text, p_permanent boolean, p_backoff_ms bigint,
    p_queue text, p_actor text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_instance uuid;
    v_status text;
BEGIN
    v_instance := (SELECT instance_id FROM messages WHERE zaap_id = p_zaap);
    PERFORM wmq_lock_instance(v_instance);
    PERFORM wmq_set_detail(p_error);
    UPDATE messages m
       SET attempts = c.attempts,
           last_error = p_error,
           status = CASE WHEN p_permanent OR c.attempts >= m.max_attempts
                         THEN 'discarded' ELSE 'retryable' END,
           finished_at = CASE WHEN p_permanent OR c.attempts >= m.max_attempts THEN now() END
      FROM (SELECT CASE WHEN status = 'running' THEN attempts + 1 ELSE attempts END AS attempts
              FROM messages WHERE zaap_id = p_zaap) c
     WHERE m.zaap_id = p_zaap AND m.status IN ('running', 'sending') AND m.worker_id = p_worker
    RETURNING m.status INTO v_status;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_status = 'retryable' THEN
        PERFORM wmq_dispatch(p_zaap, 1::smallint, now() + wmq_ms(p_backoff_ms), p_queue, p_actor);
    ELSE
        PERFORM wmq_dispatch_head(v_instance, p_queue, p_actor);
    END IF;
    RETURN v_status;
END
$$;

-- §3.4: the instance is not connected (seen before the send, or reported by the transport as
-- the reason the send did not happen). Put the head back, attempts unchanged, and check again
-- after the delay; its successors keep waiting.
CREATE FUNCTION wmq_snooze(
    p_zaap text, p_worker uuid, p_delay_ms bigint, p_reason text, p_queue text, p_actor text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wmq_lock_instance((SELECT instance_id FROM messages WHERE zaap_id = p_zaap));
    PERFORM wmq_set_detail(p_reason);
    -- A send refused for want of a connection did not happen: it is no attempt.
    UPDATE messages
       SET status = 'scheduled', worker_id = NULL,
           attempts = CASE WHEN status = 'sending' THEN attempts - 1 ELSE attempts END
     WHERE zaap_id = p_zaap AND status IN ('running', 'sending') AND worker_id = p_worker;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM wmq_dispatch(p_zaap, 1::smallint, now() + wmq_ms(p_delay_ms), p_queue, p_actor);
    RETURN true;
END
$$;

-- §3.8: cancel one message. Allowed while nothing is being sent; refused for running and
-- sending. Returns the status the message had (NULL if unknown) and whether it was cancelled.
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

-- §3.8: cancel every pending message of one instance (in-flight ones finish). Returns how
-- many were cancelled, or NULL for an unknown instance.
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

-- §3.8: pause keeps messages and dispatches none (a queued head is withdrawn; a message in
-- flight finishes); resume dispatches the head again. Returns false for an unknown instance.
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

-- §3.4: an instance's connection changed (a transport event, or the simulator's switch).
-- On connect, a head waiting out a snooze is dispatched again at once (paced as usual) rather
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

-- A worker is alive while its broker heartbeat is fresher than the TTL.
CREATE FUNCTION wmq_worker_alive(p_worker uuid, p_ttl_s double precision) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM dramatiq.worker w
         WHERE w.worker_id = p_worker
           AND w.heartbeat_at > now() - make_interval(secs => p_ttl_s))
$$;

-- R5, §3.7: recover the messages of dead workers (no broker heartbeat within p_ttl_s), and
-- those whose broker message is gone while they are still running or sending (a live worker
-- that could not record the outcome and gave up: its broker message was acked, so nobody will
-- finish it). A `running` message had not reached the send: it goes again. A `sending` one may or may not
-- have reached WhatsApp: with p_resend it is sent again (at-least-once; the attempt counts),
-- otherwise discarded with that reason. `typing` holds no worker: its phase-2 dispatch is in
-- the broker (and if not, wmq_redispatch_orphans finds it). Each message is re-checked under
-- its instance lock, so two maintenance loops never recover one twice.
CREATE FUNCTION wmq_rescue(
    p_ttl_s double precision, p_resend boolean, p_queue text, p_actor text)
RETURNS TABLE (zaap_id text, instance_id uuid, sequence bigint, from_status text, to_status text)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    m record;
    v_status text;
    v_cause text;
BEGIN
    FOR c IN
        SELECT x.zaap_id, x.instance_id FROM messages x
         WHERE x.status IN ('running', 'sending')
           AND (NOT wmq_worker_alive(x.worker_id, p_ttl_s)
                OR NOT EXISTS (SELECT 1 FROM dramatiq.queue q WHERE q.message_id = x.dispatch_id))
         ORDER BY x.instance_id
    LOOP
        PERFORM wmq_lock_instance(c.instance_id);
        SELECT x.zaap_id, x.instance_id, x.sequence, x.status, x.attempts, x.max_attempts,
               x.worker_id, x.dispatch_id
          INTO m FROM messages x WHERE x.zaap_id = c.zaap_id FOR UPDATE;
        -- Re-check under the lock: the message may be gone, another loop may have been first,
        -- or the worker came back.
        IF NOT FOUND OR m.status NOT IN ('running', 'sending') THEN
            CONTINUE;
        END IF;
        IF wmq_worker_alive(m.worker_id, p_ttl_s) THEN
            IF EXISTS (SELECT 1 FROM dramatiq.queue q WHERE q.message_id = m.dispatch_id) THEN
                CONTINUE;
            END IF;
            v_cause := 'worker ' || m.worker_id || ' gave up recording it';
        ELSE
            v_cause := 'worker ' || m.worker_id || ' died';
        END IF;

        IF m.status = 'running' THEN
            v_status := 'scheduled';
            PERFORM wmq_set_detail('rescued: ' || v_cause || ' before the send');
        ELSIF p_resend AND m.attempts < m.max_attempts THEN
            v_status := 'retryable';
            PERFORM wmq_set_detail('uncertain: ' || v_cause
                || ' during the send; sending again (MESSAGE_QUEUE_RESEND_UNCERTAIN=true)');
        ELSE
            v_status := 'discarded';
            PERFORM wmq_set_detail('uncertain: ' || v_cause || ' during the send; '
                || CASE WHEN p_resend THEN 'no attempts left'
                        ELSE 'not sent again (MESSAGE_QUEUE_RESEND_UNCERTAIN=false)' END);
        END IF;
        UPDATE messages x
           SET status = v_status,
               last_error = CASE WHEN m.status = 'sending' THEN current_setting('wmq.event_detail')
                                 ELSE x.last_error END,
               finished_at = CASE WHEN v_status = 'discarded' THEN now() END
         WHERE x.zaap_id = m.zaap_id;
        IF v_status = 'discarded' THEN
            PERFORM wmq_dispatch_head(m.instance_id, p_queue, p_actor);
        ELSE
            PERFORM wmq_dispatch(m.zaap_id, 1::smallint, now(), p_queue, p_actor);
        END IF;
        RETURN QUERY SELECT m.zaap_id, m.instance_id, m.sequence, m.status, v_status;
    END LOOP;
END
$$;

-- §3.7: heads that should be in the broker and are not (a consumed message whose claim failed,
-- a lost dispatch) are dispatched again. A head counts as orphaned when it waits for a worker
-- (scheduled, retryable, typing), its instance is not paused, and no broker row carries its
-- dispatch id. Re-checked under the instance lock.
CREATE FUNCTION wmq_redispatch_orphans(p_queue text, p_actor text)
RETURNS TABLE (zaap_id text, instance_id uuid, sequence bigint, status text)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    h record;
BEGIN
    FOR c IN
        SELECT DISTINCT x.instance_id FROM messages x
         WHERE x.status IN ('scheduled', 'retryable', 'typing')
           AND CASE WHEN x.dispatch_id IS NOT NULL
                    THEN NOT EXISTS (SELECT 1 FROM dramatiq.queue q WHERE q.message_id = x.dispatch_id)
                    -- Never dispatched: only a head should have been.
                    ELSE NOT EXISTS (SELECT 1 FROM messages p
                                      WHERE p.instance_id = x.instance_id AND p.sequence < x.sequence
                                        AND wmq_is_unfinished(p.status)) END
    LOOP
        PERFORM wmq_lock_instance(c.instance_id);
        SELECT x.zaap_id, x.sequence, x.status, x.dispatch_id, x.phase, x.available_at, i.paused INTO h
          FROM messages x JOIN instances i ON i.id = x.instance_id
         WHERE x.instance_id = c.instance_id AND wmq_is_unfinished(x.status)
         ORDER BY x.sequence LIMIT 1;
        IF NOT FOUND OR h.paused OR h.status NOT IN ('scheduled', 'retryable', 'typing')
           OR EXISTS (SELECT 1 FROM dramatiq.queue q WHERE q.message_id = h.dispatch_id) THEN
            CONTINUE;
        END IF;
        -- Dispatched again for the time the lost dispatch was due (the end of the typing, the
        -- end of the backoff), so a lost broker message costs no delay it should have had.
        IF h.status = 'typing' THEN
            PERFORM wmq_dispatch(h.zaap_id, 2::smallint, h.available_at, p_queue, p_actor);
        ELSIF h.dispatch_id IS NULL THEN
            PERFORM wmq_dispatch_head(c.instance_id, p_queue, p_actor);
        ELSE
            PERFORM wmq_dispatch(h.zaap_id, 1::smallint, h.available_at, p_queue, p_actor);
        END IF;
        RETURN QUERY SELECT h.zaap_id, c.instance_id, h.sequence, h.status;
    END LOOP;
END
$$;

-- Retention: finished messages (with their history) older than the period, in batches.
CREATE FUNCTION wmq_purge_finished(p_retention_s double precision, p_batch integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM messages
     WHERE zaap_id IN (
        SELECT zaap_id FROM messages
         WHERE finished_at IS NOT NULL
           AND finished_at < now() - make_interval(secs => p_retention_s)
         ORDER BY finished_at
         LIMIT p_batch);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    DELETE FROM simulator_events
     WHERE ended_at < now() - make_interval(secs => p_retention_s);
    RETURN v_count;
END
$$;

-- Remove an instance with its queue and history, under its lock (R1): its queued broker
-- messages are withdrawn first. Returns false for an unknown instance.
CREATE FUNCTION wmq_remove_instance(p_instance uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT wmq_lock_instance(p_instance) THEN
        RETURN false;
    END IF;
    DELETE FROM dramatiq.queue q USING messages m
     WHERE m.instance_id = p_instance AND q.message_id = m.dispatch_id AND q.state = 'queued';
    DELETE FROM instances WHERE id = p_instance;
    RETURN true;
END
$$;
