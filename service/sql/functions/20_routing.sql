-- Which broker queue an instance's dispatches go to: the one place that decides it. An instance
-- whose transport is session-bound (a live WhatsApp connection held by one worker process) is
-- served from its lease owner's own queue, `<queue>-s.<worker>`, which only that
-- worker consumes (an expired lease too: its owner keeps it until someone takes it over, and
-- whoever does routes the head anew); while nobody holds the lease, from `<queue>-sessions`, which nobody
-- consumes (its next owner routes the head to itself: 25_leases.sql). Every other instance goes
-- to `<queue>`. Which transports are session-bound is data: the `transports` table
-- (service/sql/migrations/007_transports.sql).

CREATE FUNCTION wmq_queue_name(p_queue text, p_session_bound boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_queue || CASE WHEN p_session_bound THEN '-sessions' ELSE '' END
$$;

-- A worker's own queue for the session instances it owns (NULL owner: the parking queue). The
-- worker is named by the first 12 hex digits of its id: a queue's NOTIFY channel,
-- `dramatiq.<queue>.enqueue`, must fit PostgreSQL's 63 bytes.
CREATE FUNCTION wmq_session_queue(p_queue text, p_worker uuid) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_worker IS NULL THEN p_queue || '-sessions'
                ELSE p_queue || '-s.' || left(replace(p_worker::text, '-', ''), 12) END
$$;

CREATE FUNCTION wmq_queue_for(p_instance uuid, p_queue text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT CASE WHEN t.session_bound THEN wmq_session_queue(p_queue, l.worker_id) ELSE p_queue END
              FROM instances i
              JOIN transports t ON t.name = i.transport
              LEFT JOIN session_leases l ON l.instance_id = i.id
             WHERE i.id = p_instance);
END
$$;

-- Every queue a worker must declare, and whether it is the session-bound parking queue (never
-- consumed). A worker also declares its own session queue (workers/main.py).
CREATE FUNCTION wmq_queues(p_queue text)
RETURNS TABLE (queue_name text, session_bound boolean)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT wmq_queue_name(p_queue, t.session_bound), t.session_bound
      FROM transports t
     UNION
    SELECT p_queue, false
     ORDER BY 1
$$;
