-- Maintenance, run by the maintenance leader of the workers (workers/maintenance/): rescue of
-- dead workers' messages, re-dispatch of heads whose broker message was lost, retention.
-- Each re-checks every message under its instance lock (I1), so two leaders never act twice.

-- I5, rescue only the dead: recover the messages of dead workers, and those whose broker
-- message is gone while they are still running or sending (a live worker that could not record
-- the outcome and gave up: its broker message was acked, so nobody will finish it).
--
-- A worker is dead when its heartbeat is older than p_ttl_s *and the judge saw it happen*:
-- p_judge says that the calling process has had continuous database access for longer than the
-- TTL (workers/liveness.py). After an outage or a failover every heartbeat is stale, the
-- judge's included; a judge that has just come back must not take its peers for dead, since
-- they get back within a second or two and heartbeat at once. Without p_judge only the
-- "gave up" rule applies.
--
-- A `running` message had not reached the send: it goes again, and the rescue counts as an
-- attempt, so a message whose handling kills its worker (a Go panic) is discarded after the
-- attempt limit instead of taking every worker down in turn. A `sending` one may or may not have
-- reached WhatsApp: with p_resend it is sent again (at-least-once; the attempt counts), otherwise
-- discarded with that reason. If the worker was alive after all and completes the send, its
-- completion is still accepted (wmq_complete). `typing` holds no worker: its phase-2 dispatch is
-- in the broker (and if not, wmq_redispatch_orphans finds it). Each message is re-checked under
-- its instance lock, so two maintenance loops never recover one twice.
CREATE FUNCTION wmq_rescue(
    p_ttl_s double precision, p_resend boolean, p_judge boolean, p_queue text, p_actor text)
RETURNS TABLE (zaap_id text, instance_id uuid, sequence bigint, from_status text, to_status text)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    m record;
    v_cause text;
BEGIN
    FOR c IN
        SELECT x.zaap_id, x.instance_id FROM messages x
         WHERE x.status IN ('running', 'sending')
           AND ((p_judge AND NOT wmq_worker_alive(x.worker_id, p_ttl_s))
                OR NOT EXISTS (SELECT 1 FROM dramatiq.queue q WHERE q.message_id = x.dispatch_id))
         ORDER BY x.instance_id
    LOOP
        PERFORM wmq_lock_instance(c.instance_id);
        SELECT x.zaap_id, x.instance_id, x.sequence, x.status, x.worker_id, x.dispatch_id
          INTO m FROM messages x WHERE x.zaap_id = c.zaap_id FOR UPDATE;
        -- Re-check under the lock: the message may be gone, another loop may have been first,
        -- or the worker came back.
        IF NOT FOUND OR m.status NOT IN ('running', 'sending') THEN
            CONTINUE;
        END IF;
        IF NOT p_judge OR wmq_worker_alive(m.worker_id, p_ttl_s) THEN
            IF EXISTS (SELECT 1 FROM dramatiq.queue q WHERE q.message_id = m.dispatch_id) THEN
                CONTINUE;
            END IF;
            v_cause := 'worker ' || m.worker_id || ' gave up recording it';
        ELSE
            v_cause := 'worker ' || m.worker_id || ' died';
        END IF;
        RETURN QUERY SELECT m.zaap_id, m.instance_id, m.sequence, m.status,
                            wmq_recover(m.zaap_id, v_cause, p_resend, p_queue, p_actor);
    END LOOP;
END
$$;

-- One message in flight whose worker will not finish it (`p_cause`: died, gave up, lost the
-- session lease), taken under its instance lock by the caller: a `running` one goes again (the
-- attempt counts), a `sending` one follows p_resend. Returns its new status.
CREATE FUNCTION wmq_recover(p_zaap text, p_cause text, p_resend boolean, p_queue text, p_actor text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    m record;
    v_status text;
    v_attempts integer;
BEGIN
    SELECT x.instance_id, x.status, x.attempts, x.max_attempts INTO m FROM messages x WHERE x.zaap_id = p_zaap;
    v_attempts := CASE WHEN m.status = 'running' THEN m.attempts + 1 ELSE m.attempts END;
    IF m.status = 'running' AND v_attempts < m.max_attempts THEN
        v_status := 'scheduled';
        PERFORM wmq_set_detail('rescued: ' || p_cause || ' before the send (the attempt counts)');
    ELSIF m.status = 'running' THEN
        v_status := 'discarded';
        PERFORM wmq_set_detail('rescued: ' || p_cause || ' before the send; no attempts left');
    ELSIF p_resend AND m.attempts < m.max_attempts THEN
        v_status := 'retryable';
        PERFORM wmq_set_detail('uncertain: ' || p_cause
            || ' during the send; sending again (MESSAGE_QUEUE_RESEND_UNCERTAIN=true)');
    ELSE
        v_status := 'discarded';
        PERFORM wmq_set_detail('uncertain: ' || p_cause || ' during the send; '
            || CASE WHEN p_resend THEN 'no attempts left'
                    ELSE 'not sent again (MESSAGE_QUEUE_RESEND_UNCERTAIN=false)' END);
    END IF;
    UPDATE messages x
       SET status = v_status,
           attempts = v_attempts,
           last_error = current_setting('wmq.event_detail'),
           finished_at = CASE WHEN v_status = 'discarded' THEN now() END
     WHERE x.zaap_id = p_zaap;
    IF v_status = 'discarded' THEN
        PERFORM wmq_dispatch_head(m.instance_id, p_queue, p_actor);
    ELSE
        PERFORM wmq_dispatch(p_zaap, 1::smallint, now(), p_queue, p_actor);
    END IF;
    RETURN v_status;
END
$$;

-- Heads that should be in the broker and are not (a consumed message whose claim failed,
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

-- Retention: finished messages (with their history) older than the period, in batches. A
-- transport that keeps records of its own purges them itself (workers/transports/).
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
    RETURN v_count;
END
$$;

-- Idempotency keys past their time to live (24 h), in batches: their answers are no longer
-- given back, so a send with an old key enqueues anew.
CREATE FUNCTION wmq_purge_idempotency_keys(p_ttl interval, p_batch integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM idempotency_keys
     WHERE (instance_id, key) IN (
        SELECT instance_id, key FROM idempotency_keys
         WHERE created_at < now() - p_ttl
         ORDER BY created_at
         LIMIT p_batch);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Webhook deliveries delivered or given up longer ago than the retention period, oldest first,
-- in batches: the table would otherwise keep every delivery ever made.
CREATE FUNCTION wmq_purge_webhook_deliveries(p_retention_s double precision, p_batch integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM webhook_deliveries
     WHERE id IN (
        SELECT id FROM webhook_deliveries
         WHERE coalesce(delivered_at, given_up_at) < now() - make_interval(secs => p_retention_s)
         ORDER BY id
         LIMIT p_batch);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
