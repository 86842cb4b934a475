-- Helpers every other definition uses: what "unfinished" means, milliseconds as intervals, the
-- reason carried into the history, the instance lock (I1), and worker liveness.
--
-- Every file in service/sql/functions/ is re-applied, in name order, whenever any of them changes
-- (service/db.py `migrate`): edit a definition here, never in a migration, and raise the number
-- in service/sql/functions/VERSION with every change (a process never applies older definitions).
-- The service owns the names wmq_* (and get_next_message_sequence) and v_* in schema public.

-- The statuses that keep a message in its instance's queue (it blocks every later one).
CREATE FUNCTION wmq_is_unfinished(p_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_status IN ('scheduled', 'retryable', 'running', 'typing', 'sending')
$$;

CREATE FUNCTION wmq_ms(p_ms bigint) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_interval(secs => p_ms / 1000.0)
$$;

-- The reason the next status change records in message_events (I6), for this transaction.
-- PL/pgSQL rather than SQL: PostgreSQL (before 18) plans a SQL function it cannot inline at
-- every call, while PL/pgSQL keeps its plans for the session (docs/benchmarks.md).
CREATE FUNCTION wmq_set_detail(p_detail text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('wmq.event_detail', COALESCE(p_detail, ''), true);
END
$$;

-- I1, the instance lock: every transaction that can change which message is an instance's head
-- takes it first. Returns false when the instance does not exist.
CREATE FUNCTION wmq_lock_instance(p_instance uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM instance_queues WHERE instance_id = p_instance FOR UPDATE;
    RETURN FOUND;
END
$$;

-- A worker is alive while its broker heartbeat is fresher than the TTL. PL/pgSQL, as every
-- function here that reads a table: its plans are kept for the connection, where a LANGUAGE sql
-- function that cannot be inlined (a subquery) is planned again at every call (PostgreSQL 16).
CREATE FUNCTION wmq_worker_alive(p_worker uuid, p_ttl_s double precision) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM dramatiq.worker w
         WHERE w.worker_id = p_worker
           AND w.heartbeat_at > now() - make_interval(secs => p_ttl_s));
END
$$;
