-- Session leases (issue 15): each instance of a session-bound transport is owned by one worker
-- at a time. Every live worker takes a fair share (instances ÷ live workers, rounded up), with a
-- slack of one before it gives any away, so a flapping worker moves little. An owner renews its
-- leases every round; a lease it stops renewing (a dead, frozen or cut-off worker) expires after
-- the TTL and is taken over, with a fence one higher, only by a worker that may judge others dead
-- (it has had the database continuously for longer than the TTL: after an outage everybody renews
-- their own first, nobody takes over). A claim must carry the lease's fence, and every transition
-- needs the lease (wmq_lease_ok), so a worker that lost its lease can record nothing more.

-- Every session instance has its lease row from its creation, free until a round takes it (a
-- round that made the missing rows itself scanned every instance: 19 of its 21 ms with 10,000
-- sessions, and a fleet of 100 workers could not keep up; bench/leases.py).
CREATE FUNCTION wmq_make_lease_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM transports t WHERE t.name = NEW.transport AND t.session_bound) THEN
        INSERT INTO session_leases (instance_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER wmq_instance_lease_row AFTER INSERT ON instances
    FOR EACH ROW EXECUTE FUNCTION wmq_make_lease_row();

-- The rows of instances made before the trigger (definitions are applied in one transaction, and
-- creating the trigger holds off any insert into `instances` until it commits).
INSERT INTO session_leases (instance_id)
SELECT i.id FROM instances i JOIN transports t ON t.name = i.transport WHERE t.session_bound
ON CONFLICT DO NOTHING;

-- Whether `p_worker` may act on the instance: always for an instance that needs no session;
-- for a session instance, only while it holds the lease (with `p_fence`, that fence). An expired
-- lease still counts while nobody has taken it over: a takeover takes the instance lock, as
-- every transition does, so nobody else can have acted on the instance meanwhile (after an
-- outage longer than the TTL, its owner's completion of a send is still its to record).
-- Every claim and transition calls it: PL/pgSQL keeps its plans for the connection (as a
-- LANGUAGE sql function with subqueries, it was planned again at every call: 0.12 ms, against
-- 0.01 ms now, and 0.5 ms of PostgreSQL CPU per message sent; docs/benchmarks.md).
CREATE FUNCTION wmq_lease_ok(p_instance uuid, p_worker uuid, p_fence bigint DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN NOT EXISTS (SELECT 1 FROM instances i JOIN transports t ON t.name = i.transport
                        WHERE i.id = p_instance AND t.session_bound)
        OR EXISTS (SELECT 1 FROM session_leases l
                    WHERE l.instance_id = p_instance AND l.worker_id = p_worker
                      AND (p_fence IS NULL OR l.fence = p_fence));
END
$$;

-- Send the instance's head (if it waits for a worker) to where its lease now says: the owner's
-- queue, or the parking queue. Its previous dispatch is withdrawn (wmq_dispatch).
CREATE FUNCTION wmq_route_head(p_instance uuid, p_queue text, p_actor text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    h record;
BEGIN
    SELECT m.zaap_id, m.status, m.available_at INTO h FROM messages m
     WHERE m.instance_id = p_instance AND wmq_is_unfinished(m.status)
     ORDER BY m.sequence LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    ELSIF h.status = 'typing' THEN  -- its phase 2 is due when the typing ends
        PERFORM wmq_dispatch(h.zaap_id, 2::smallint, greatest(h.available_at, now()), p_queue, p_actor);
    ELSIF h.status IN ('scheduled', 'retryable') THEN
        PERFORM wmq_dispatch_head(p_instance, p_queue, p_actor, true);
    END IF;
END
$$;

-- The broker rows still queued for a worker that owns no session any more: stale (each head was
-- routed to its new owner when the lease changed hands), and nobody would ever consume them.
CREATE FUNCTION wmq_forget_session_queue(p_worker uuid, p_queue text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM session_leases WHERE worker_id = p_worker) THEN
        DELETE FROM dramatiq.queue WHERE queue_name = wmq_session_queue(p_queue, p_worker) AND state = 'queued';
    END IF;
END
$$;

-- Give a lease up (its owner leaves, or has more than its share): the head waits in the parking
-- queue for the next owner. Never while the owner has one of the instance's messages in flight:
-- the next owner would take that message for abandoned and send it again. It stays, renewed,
-- until the send is recorded (or, if its owner never records it, expires: the resend of a worker
-- taken for dead).
CREATE FUNCTION wmq_release_lease(p_instance uuid, p_worker uuid, p_queue text, p_actor text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wmq_lock_instance(p_instance);
    IF EXISTS (SELECT 1 FROM messages x WHERE x.instance_id = p_instance AND x.worker_id = p_worker
                                          AND x.status IN ('running', 'sending')) THEN
        RETURN false;
    END IF;
    UPDATE session_leases SET worker_id = NULL, changed_at = now()
     WHERE instance_id = p_instance AND worker_id = p_worker;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE session_lease_history SET released_at = now(), ended_by = 'released'
     WHERE instance_id = p_instance AND worker_id = p_worker AND released_at IS NULL;
    PERFORM wmq_route_head(p_instance, p_queue, p_actor);
    PERFORM wmq_forget_session_queue(p_worker, p_queue);
    RETURN true;
END
$$;

-- A lease is abandoned when it has expired and its owner's heartbeat is stale too: a worker
-- whose lease round is merely late (a slow round, a busy machine) keeps its sessions, as a slow
-- worker keeps its messages (I5); a dead, frozen or cut-off one loses both.
CREATE FUNCTION wmq_lease_abandoned(p_owner uuid, p_expires_at timestamptz, p_heartbeat_ttl_s double precision)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_expires_at <= now() AND NOT wmq_worker_alive(p_owner, p_heartbeat_ttl_s)
$$;

-- Take a lease that is free, or abandoned (`p_judge` only): a fence one higher, the previous
-- owner's messages in flight recovered as the rescuer would (a `sending` one follows p_resend),
-- and the head routed to the new owner's queue.
CREATE FUNCTION wmq_acquire_lease(
    p_instance uuid, p_worker uuid, p_ttl_s double precision, p_heartbeat_ttl_s double precision,
    p_judge boolean, p_resend boolean, p_queue text, p_actor text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    m record;
BEGIN
    PERFORM wmq_lock_instance(p_instance);
    SELECT * INTO l FROM session_leases WHERE instance_id = p_instance FOR UPDATE;
    IF NOT FOUND OR l.worker_id = p_worker
       OR NOT (l.worker_id IS NULL OR (p_judge AND wmq_lease_abandoned(l.worker_id, l.expires_at, p_heartbeat_ttl_s)))
    THEN
        RETURN false;
    END IF;
    UPDATE session_leases
       SET worker_id = p_worker, fence = l.fence + 1, expires_at = now() + make_interval(secs => p_ttl_s),
           changed_at = now()
     WHERE instance_id = p_instance;
    IF l.worker_id IS NOT NULL THEN
        UPDATE session_lease_history SET released_at = l.expires_at, ended_by = 'expired'
         WHERE instance_id = p_instance AND worker_id = l.worker_id AND released_at IS NULL;
        PERFORM wmq_forget_session_queue(l.worker_id, p_queue);
    END IF;
    INSERT INTO session_lease_history (instance_id, worker_id, fence) VALUES (p_instance, p_worker, l.fence + 1);
    FOR m IN SELECT x.zaap_id FROM messages x
              WHERE x.instance_id = p_instance AND x.status IN ('running', 'sending')
                AND x.worker_id IS DISTINCT FROM p_worker LOOP
        PERFORM wmq_recover(m.zaap_id, 'its worker lost the WhatsApp session lease', p_resend, p_queue, p_actor);
    END LOOP;
    PERFORM wmq_route_head(p_instance, p_queue, p_actor);
    RETURN true;
END
$$;

-- Renew a worker's leases, even expired ones, as long as nobody took them meanwhile (nobody
-- acted on those instances then). Last in a round: lease rows are locked after instance rows
-- everywhere (wmq_release_lease, wmq_acquire_lease, an instance's removal), never before.
-- Only those with less than half the TTL left are written: a worker renews every few seconds, so
-- its leases always keep more than half the TTL, for one write per lease every half TTL instead
-- of one every round (10 workers over 10,000 sessions: each round rewrote 1,000 rows twice).
CREATE FUNCTION wmq_renew_leases(p_worker uuid, p_ttl_s double precision) RETURNS void
LANGUAGE sql AS $$
    UPDATE session_leases SET expires_at = now() + make_interval(secs => p_ttl_s)
     WHERE worker_id = p_worker AND expires_at < now() + make_interval(secs => p_ttl_s / 2);
$$;

-- One worker's round, serialised with every other worker's (a transaction lock): renew its
-- leases, give up what exceeds its share by more than one (or everything when `p_stopping`),
-- take free (or, as a judge, expired) ones up to its share (unless not `p_acquire`: a stopping
-- worker finishing its sends). Returns the instances it owns.
CREATE FUNCTION wmq_lease_round(
    p_worker uuid, p_ttl_s double precision, p_heartbeat_ttl_s double precision, p_judge boolean,
    p_resend boolean, p_acquire boolean, p_stopping boolean, p_queue text, p_actor text)
RETURNS TABLE (instance_id uuid, transport text, fence bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_live integer;
    v_total integer;
    v_share integer;
    v_mine integer;
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('wmq.session-leases'));
    IF p_stopping THEN
        FOR r IN SELECT l.instance_id FROM session_leases l WHERE l.worker_id = p_worker ORDER BY 1 LOOP
            PERFORM wmq_release_lease(r.instance_id, p_worker, p_queue, p_actor);
        END LOOP;
        PERFORM wmq_renew_leases(p_worker, p_ttl_s);  -- what it could not give up (a send in flight)
        RETURN;
    END IF;

    SELECT count(*) INTO v_live FROM dramatiq.worker w
     WHERE w.heartbeat_at > now() - make_interval(secs => p_heartbeat_ttl_s) AND w.worker_id <> p_worker;
    v_live := v_live + 1;
    SELECT count(*) INTO v_total FROM session_leases;
    v_share := ceil(v_total::numeric / v_live);
    SELECT count(*) INTO v_mine FROM session_leases l WHERE l.worker_id = p_worker;

    IF v_mine > v_share + 1 THEN
        -- Only those with nothing in flight (wmq_release_lease): the others wait for a later round.
        FOR r IN SELECT l.instance_id FROM session_leases l
                  WHERE l.worker_id = p_worker
                    AND NOT EXISTS (SELECT 1 FROM messages x WHERE x.instance_id = l.instance_id
                                       AND x.status IN ('running', 'sending'))
                  ORDER BY l.instance_id
                  LIMIT v_mine - v_share LOOP
            PERFORM wmq_release_lease(r.instance_id, p_worker, p_queue, p_actor);
        END LOOP;
    ELSIF v_mine < v_share AND p_acquire THEN
        FOR r IN SELECT l.instance_id FROM session_leases l
                  WHERE l.worker_id IS NULL
                     OR (p_judge AND l.worker_id <> p_worker
                         AND wmq_lease_abandoned(l.worker_id, l.expires_at, p_heartbeat_ttl_s))
                  ORDER BY l.worker_id NULLS FIRST, l.instance_id
                  LIMIT v_share - v_mine LOOP
            PERFORM wmq_acquire_lease(r.instance_id, p_worker, p_ttl_s, p_heartbeat_ttl_s, p_judge, p_resend,
                                      p_queue, p_actor);
        END LOOP;
    END IF;


    PERFORM wmq_renew_leases(p_worker, p_ttl_s);
    RETURN QUERY SELECT l.instance_id, i.transport, l.fence
                   FROM session_leases l JOIN instances i ON i.id = l.instance_id
                  WHERE l.worker_id = p_worker;
END
$$;
