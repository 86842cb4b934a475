-- Sequencing and dispatch: how a message gets its place and its due time, and how the head of
-- an instance's queue is put into the broker.
--
-- I2, dispatch in the same transaction: a dispatch is a row we insert into dramatiq-postgres' own
-- table, in the caller's transaction, so a committed transition and its dispatch are one fact.
-- I3, one live dispatch per message: the dispatch id is stored on the message; the claim accepts
-- that broker message only, so a stale or duplicated broker message can never run it.

-- The seed's sequence function: hands out the next sequence under the instance lock (I1) and
-- the chained due time:
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
DECLARE
    v_cap integer;
    v_count integer;
    v_window timestamptz;
BEGIN
    -- The sequence, and the per-minute count of an instance with a cap (a new window once the
    -- last one is a minute old); over the cap, nothing of this enqueue stays (SQLSTATE WQ429,
    -- DETAIL: the seconds to wait, the cap).
    UPDATE instance_queues q
       SET last_sequence = q.last_sequence + 1,
           rate_window_start = CASE WHEN q.max_per_minute IS NULL THEN NULL
                                    WHEN q.rate_window_start IS NULL
                                      OR q.rate_window_start <= now() - interval '1 minute' THEN now()
                                    ELSE q.rate_window_start END,
           rate_count = CASE WHEN q.max_per_minute IS NULL THEN 0
                             WHEN q.rate_window_start IS NULL
                               OR q.rate_window_start <= now() - interval '1 minute' THEN 1
                             ELSE q.rate_count + 1 END
     WHERE q.instance_id = p_instance
 RETURNING q.last_sequence, q.max_per_minute, q.rate_count, q.rate_window_start
      INTO sequence, v_cap, v_count, v_window;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_cap IS NOT NULL AND v_count > v_cap THEN
        RAISE EXCEPTION 'more than % messages in a minute', v_cap USING ERRCODE = 'WQ429',
            DETAIL = GREATEST(ceil(extract(epoch FROM v_window + interval '1 minute' - now())), 1)::text
                     || ',' || v_cap;
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

-- I2: put one message into the broker, as a row of dramatiq-postgres' own table, in the
-- caller's transaction. The broker message carries ids only; its message_id is the dispatch
-- id, a name-based UUID of (zaap_id, attempt, phase, fence), stored on the message (I3). A
-- previous dispatch that is still queued is withdrawn.
CREATE FUNCTION wmq_dispatch(
    p_zaap text, p_phase smallint, p_available_at timestamptz, p_queue text, p_actor text)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_new uuid;
    v_old uuid;
    v_queue text;
    v_fence bigint;
BEGIN
    -- The fence of the instance's session lease, if it has one: a claim checks it is still the
    -- lease's (wmq_claim), so a dispatch made for a previous owner is never run by anyone.
    v_fence := COALESCE((SELECT l.fence FROM session_leases l JOIN messages x ON x.instance_id = l.instance_id
                          WHERE x.zaap_id = p_zaap), 0);
    UPDATE messages m
       SET attempt = m.attempt + 1,
           phase = p_phase,
           available_at = p_available_at,
           fence = v_fence,
           dispatch_id = md5(m.zaap_id || ':' || (m.attempt + 1) || ':' || p_phase || ':' || v_fence)::uuid
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
CREATE FUNCTION wmq_paced_at(
    p_instance uuid, p_not_before timestamptz, p_delay_ms bigint, p_jitter_ms bigint)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT GREATEST(p_not_before,
                            q.last_sent_at + wmq_ms(p_delay_ms + p_jitter_ms),
                            q.last_sent_at + wmq_ms(i.min_send_interval_ms))
              FROM instance_queues q JOIN instances i ON i.id = q.instance_id
             WHERE q.instance_id = p_instance);
END
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
-- The caller holds the instance lock (I1). With p_redispatch, a head already in the broker is
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

-- Accept one message. One transaction: lock and sequence, insert, dispatch if head.
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

-- An enqueue under an idempotency key (issue 13): the first request with the key enqueues and
-- keeps its answer; a later one with the same request (hash) gets that answer back and
-- enqueues nothing; one with another request is refused (SQLSTATE WQ422). A concurrent
-- request with the key waits on the first one's row (the primary key) and then replays it.
-- Keys older than p_ttl count as unused.
CREATE FUNCTION wmq_enqueue_once(
    p_key text, p_hash text, p_ttl interval,
    p_zaap text, p_instance uuid, p_type text, p_phone text, p_payload jsonb,
    p_delay_ms bigint, p_typing_ms bigint, p_jitter_ms bigint, p_scheduled_for timestamptz,
    p_max_attempts integer, p_queue text, p_actor text)
RETURNS TABLE (zaap_id text, sequence bigint, scheduled_at timestamptz, status text, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    k idempotency_keys;
    e record;
BEGIN
    INSERT INTO idempotency_keys AS i (instance_id, key, request_hash, zaap_id, sequence, scheduled_at, status)
    VALUES (p_instance, p_key, p_hash, p_zaap, 0, now(), 'pending')
    ON CONFLICT (instance_id, key) DO UPDATE
        SET request_hash = EXCLUDED.request_hash, zaap_id = EXCLUDED.zaap_id, created_at = now()
        WHERE i.created_at < now() - p_ttl
    RETURNING * INTO k;
    IF k.instance_id IS NULL THEN  -- used, and still valid: the first answer, or a refusal
        SELECT * INTO k FROM idempotency_keys i WHERE i.instance_id = p_instance AND i.key = p_key;
        IF k.request_hash <> p_hash THEN
            RAISE EXCEPTION 'idempotency key % was used with another request', p_key USING ERRCODE = 'WQ422';
        END IF;
        RETURN QUERY SELECT k.zaap_id, k.sequence, k.scheduled_at, k.status, true;
        RETURN;
    END IF;
    SELECT * INTO e FROM wmq_enqueue(p_zaap, p_instance, p_type, p_phone, p_payload, p_delay_ms, p_typing_ms,
                                     p_jitter_ms, p_scheduled_for, p_max_attempts, p_queue, p_actor);
    UPDATE idempotency_keys i SET sequence = e.sequence, scheduled_at = e.scheduled_at, status = e.status
     WHERE i.instance_id = p_instance AND i.key = p_key;
    RETURN QUERY SELECT p_zaap, e.sequence, e.scheduled_at, e.status, false;
END
$$;
