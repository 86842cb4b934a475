-- Three helpers on every message's path, rewritten from LANGUAGE sql to plpgsql with the same
-- results. PostgreSQL (before 18) plans a SQL function that it cannot inline again at every
-- call, while PL/pgSQL keeps its plans for the session: measured with track_functions in
-- bench/drain.py, the three cost 0.27, 0.09 and 0.06 ms a call before (docs/benchmarks.md).

CREATE OR REPLACE FUNCTION wmq_queue_for(p_instance uuid, p_queue text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT p_queue || CASE WHEN i.transport = 'neonize' THEN '-sessions' ELSE '' END
              FROM instances i WHERE i.id = p_instance);
END
$$;

CREATE OR REPLACE FUNCTION wmq_paced_at(
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

CREATE OR REPLACE FUNCTION wmq_set_detail(p_detail text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('wmq.event_detail', COALESCE(p_detail, ''), true);
END
$$;

-- R3, one transaction fewer per message: a dispatch that goes straight to the send (no typing
-- phase ahead of it) is claimed as `sending`, its attempt counted, in the claim's own
-- statement; only a typing phase 1 is claimed as `running`. This was a second statement
-- (wmq_mark_sending) right after the claim, with no I/O in between. What changes: a worker
-- dying between its claim and its WhatsApp call leaves the message `sending` (uncertain),
-- not `running`; MESSAGE_QUEUE_RESEND_UNCERTAIN decides, as for a death during the call.
CREATE OR REPLACE FUNCTION wmq_claim(p_zaap text, p_dispatch uuid, p_worker uuid)
RETURNS SETOF messages
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wmq_lock_instance((SELECT instance_id FROM messages WHERE zaap_id = p_zaap));
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
       AND NOT EXISTS (
            SELECT 1 FROM messages p
             WHERE p.instance_id = m.instance_id
               AND p.sequence < m.sequence
               AND wmq_is_unfinished(p.status))
    RETURNING m.*;
END
$$;

DROP FUNCTION wmq_mark_sending(text, uuid);

-- §3.5, with the broker message settled in the same transaction: the completed message's broker
-- row (its live dispatch, claimed by this worker) is deleted here, so completion and broker
-- clean-up are one atomic step, and the ack that follows has nothing left to do
-- (workers/broker.py: QueueConsumer.ack skips its statement for a settled message).
CREATE OR REPLACE FUNCTION wmq_complete(
    p_zaap text, p_worker uuid, p_whatsapp_id text, p_queue text, p_actor text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_instance uuid;
    v_dispatch uuid;
BEGIN
    v_instance := (SELECT instance_id FROM messages WHERE zaap_id = p_zaap);
    PERFORM wmq_lock_instance(v_instance);
    PERFORM wmq_set_detail('whatsapp id ' || p_whatsapp_id);
    UPDATE messages
       SET status = 'completed', whatsapp_message_id = p_whatsapp_id,
           sent_at = now(), finished_at = now()
     WHERE zaap_id = p_zaap AND status = 'sending' AND worker_id = p_worker
    RETURNING dispatch_id INTO v_dispatch;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM dramatiq.queue WHERE message_id = v_dispatch;
    UPDATE instance_queues SET last_sent_at = now() WHERE instance_id = v_instance;
    PERFORM wmq_dispatch_head(v_instance, p_queue, p_actor);
    RETURN true;
END
$$;
