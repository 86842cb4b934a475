-- The worker's transitions: claim, typing, completion, failure, snooze. Each takes the instance
-- lock first (I1) and dispatches whatever comes next in the same transaction (I2).
--
--   scheduled ─claim─▶ running ─start_typing─▶ typing ─claim─▶ sending ─complete─▶ completed
--       │                (phase 1, only with delayTyping)        ▲    │
--       └────────────────────claim (no typing)───────────────────┘    ├─fail─▶ retryable ─claim─▶ …
--                                                                     ├─fail─▶ discarded
--   running/sending ─snooze─▶ scheduled (not connected: no attempt)   └─(worker died)─▶ rescue

-- I4, the atomic claim: one statement under the instance lock. It takes the message only for
-- its live dispatch (I3), only as the head of its queue, never while its instance is paused
-- (a typing phase 2 finishes). What it grants is returned, so the worker decides nothing again:
-- `typing` (phase 1 of a message with delayTyping: status `running`, show the presence) or
-- `send` (status `sending`, its attempt counted: the WhatsApp call comes next, so a worker that
-- dies from here on leaves an uncertain send).
-- The claim is idempotent: the same worker asking again for the dispatch it already holds (its
-- first answer was lost with a connection) gets the same grant back. Another worker asking for
-- the dispatch of a message in flight gets `busy`: the broker message is the live one and must
-- stay (workers/broker.py puts it back) until its holder completes or is rescued. Zero rows: the
-- broker message is stale; skip it and let it go.
-- The unique index messages_one_in_flight makes two messages of one instance in flight
-- impossible even if a dispatch were wrong.
CREATE FUNCTION wmq_claim(p_zaap text, p_dispatch uuid, p_worker uuid)
RETURNS TABLE (
    granted text, zaap_id text, instance_id uuid, sequence bigint, message_type text, phone text,
    payload jsonb, delay_typing_ms bigint, attempts integer)
-- One row at most: the planner then joins it to `messages` by key (service/core/queries.py CLAIM)
-- instead of scanning the table for the 1,000 rows it assumes of a function.
LANGUAGE plpgsql ROWS 1 AS $$
#variable_conflict use_column
BEGIN
    PERFORM wmq_lock_instance((SELECT m.instance_id FROM messages m WHERE m.zaap_id = p_zaap));
    PERFORM wmq_set_detail(NULL);
    RETURN QUERY
    UPDATE messages m
       SET status = CASE WHEN m.phase = 1 AND m.delay_typing_ms > 0 THEN 'running' ELSE 'sending' END,
           attempts = CASE WHEN m.phase = 1 AND m.delay_typing_ms > 0 THEN m.attempts ELSE m.attempts + 1 END,
           worker_id = p_worker,
           started_at = COALESCE(m.started_at, now())
     WHERE m.zaap_id = p_zaap
       AND m.dispatch_id = p_dispatch
       AND m.status IN ('scheduled', 'retryable', 'typing')
       AND (m.status = 'typing'
            OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = m.instance_id AND i.paused))
       AND wmq_lease_ok(m.instance_id, p_worker, m.fence)
       AND NOT EXISTS (
            SELECT 1 FROM messages p
             WHERE p.instance_id = m.instance_id
               AND p.sequence < m.sequence
               AND wmq_is_unfinished(p.status))
    RETURNING CASE WHEN m.status = 'running' THEN 'typing' ELSE 'send' END,
              m.zaap_id, m.instance_id, m.sequence, m.message_type, m.phone, m.payload,
              m.delay_typing_ms, m.attempts;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT CASE WHEN m.worker_id IS DISTINCT FROM p_worker THEN 'busy'
                WHEN m.status = 'running' THEN 'typing' ELSE 'send' END,
           m.zaap_id, m.instance_id, m.sequence, m.message_type, m.phone, m.payload,
           m.delay_typing_ms, m.attempts
      FROM messages m
     WHERE m.zaap_id = p_zaap AND m.dispatch_id = p_dispatch AND m.status IN ('running', 'sending')
       AND wmq_lease_ok(m.instance_id, p_worker, m.fence);
END
$$;

-- Right before the irreversible write (workers/claim_guard.py), for a claim old enough that its
-- worker may have stood still past the TTL: does the claim still hold (still `sending`, by this
-- worker, under this dispatch, and for a session instance under the lease's fence)? When it
-- does, the worker's heartbeat is written under the instance lock, so neither the rescuer nor a
-- lease takeover (both re-check liveness under that lock) can take the message for another TTL:
-- a write that lands within the guard's bound is the only copy. Returns the database's clock, by
-- which the guard bounds the write, or NULL: not this worker's any more, write nothing.
CREATE FUNCTION wmq_claim_holds(p_zaap text, p_worker uuid, p_dispatch uuid) RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wmq_lock_instance((SELECT instance_id FROM messages WHERE zaap_id = p_zaap));
    PERFORM 1 FROM messages m
     WHERE m.zaap_id = p_zaap AND m.status = 'sending' AND m.worker_id = p_worker
       AND m.dispatch_id = p_dispatch AND wmq_lease_ok(m.instance_id, p_worker, m.fence);
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE dramatiq.worker SET heartbeat_at = now() WHERE worker_id = p_worker;
    RETURN clock_timestamp();
END
$$;

-- Phase 1 done: the presence is shown; release the thread and come back after delayTyping
-- (the phase-2 dispatch is due then: no thread waits).
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
       AND wmq_lease_ok(instance_id, p_worker)
    RETURNING delay_typing_ms INTO v_typing_ms;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM wmq_dispatch(p_zaap, 2::smallint, now() + wmq_ms(v_typing_ms), p_queue, p_actor);
    RETURN true;
END
$$;

-- The send succeeded. Record it, settle its broker message, and dispatch the next head, paced
-- from this send. The completed message's broker row is deleted here, so completion and broker
-- clean-up are one atomic step and the worker's ack has nothing left to do (workers/broker.py).
-- A completion is accepted from the worker that claimed the send even after a rescue it did not
-- deserve (it was taken for dead while the database was away, or while it stood still), as long
-- as no other worker has claimed the message since: the rescue's dispatch is withdrawn, and the
-- message is sent once. With `p_dispatch` (the claim's), a message this worker is sending again
-- under another dispatch (its retry, claimed since the call that answers now) is not completed:
-- that send is under way. Returns false when the message is no longer this worker's to complete.
CREATE FUNCTION wmq_complete(
    p_zaap text, p_worker uuid, p_whatsapp_id text, p_queue text, p_actor text, p_dispatch uuid DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_instance uuid;
    v_status text;
    v_dispatch uuid;
BEGIN
    v_instance := (SELECT instance_id FROM messages WHERE zaap_id = p_zaap);
    PERFORM wmq_lock_instance(v_instance);
    -- `retryable` or `discarded` with this worker still recorded: only the rescuer leaves a
    -- message so (a worker's own failure comes instead of its completion, a claim by another
    -- worker records that worker).
    SELECT status, dispatch_id INTO v_status, v_dispatch FROM messages
     WHERE zaap_id = p_zaap AND worker_id = p_worker AND status IN ('sending', 'retryable', 'discarded')
       AND (p_dispatch IS NULL OR status <> 'sending' OR dispatch_id = p_dispatch)
       AND wmq_lease_ok(instance_id, p_worker);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM wmq_set_detail('whatsapp id ' || p_whatsapp_id || CASE WHEN v_status = 'sending' THEN ''
        ELSE '; the send answered after all: its retry is withdrawn' END);
    UPDATE messages
       SET status = 'completed', whatsapp_message_id = p_whatsapp_id,
           sent_at = now(), finished_at = now()
     WHERE zaap_id = p_zaap;
    DELETE FROM dramatiq.queue WHERE message_id = v_dispatch;
    UPDATE instance_queues SET last_sent_at = now() WHERE instance_id = v_instance;
    PERFORM wmq_dispatch_head(v_instance, p_queue, p_actor);
    RETURN true;
END
$$;

-- A failed attempt. Retryable errors stay head and come back after the backoff; the last
-- allowed attempt, or a permanent error, discards the message and lets the next go. A failure
-- before the send (status running: the presence, say) counts as an attempt too, so that
-- nothing retries forever. Returns the new status, or NULL when the message was not this
-- worker's any more.
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
       AND wmq_lease_ok(m.instance_id, p_worker)
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

-- The instance is not connected (seen before the send, or reported by the transport as the
-- reason the send did not happen). Put the head back, attempts unchanged, and check again
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
     WHERE zaap_id = p_zaap AND status IN ('running', 'sending') AND worker_id = p_worker
       AND wmq_lease_ok(instance_id, p_worker);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM wmq_dispatch(p_zaap, 1::smallint, now() + wmq_ms(p_delay_ms), p_queue, p_actor);
    RETURN true;
END
$$;
