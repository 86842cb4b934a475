-- Which broker queue an instance's dispatches go to: the one place that decides it. An instance
-- whose transport is session-bound (a live WhatsApp connection held by one worker process) is
-- served from `<queue>-sessions`, which only the process holding the sessions consumes; every
-- other instance from `<queue>`. Which transports are session-bound is data: the `transports`
-- table (service/sql/migrations/007_transports.sql).

CREATE FUNCTION wmq_queue_name(p_queue text, p_session_bound boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_queue || CASE WHEN p_session_bound THEN '-sessions' ELSE '' END
$$;

CREATE FUNCTION wmq_queue_for(p_instance uuid, p_queue text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT wmq_queue_name(p_queue, t.session_bound)
              FROM instances i JOIN transports t ON t.name = i.transport
             WHERE i.id = p_instance);
END
$$;

-- Every queue a worker must declare, and whether only the session holder may consume it.
CREATE FUNCTION wmq_queues(p_queue text)
RETURNS TABLE (queue_name text, session_bound boolean)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT wmq_queue_name(p_queue, t.session_bound), t.session_bound
      FROM transports t
     UNION
    SELECT p_queue, false
     ORDER BY 1
$$;
