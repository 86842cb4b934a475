-- The seed's monitoring views (they read the tables; the API's own reads are service/core/queries.py).

-- Status of every instance queue: how many messages in each status, and where it stands.
CREATE VIEW v_queue_stats_by_instance AS
SELECT
    i.id AS instance_id,
    i.name,
    i.paused,
    i.connection_state,
    count(m.*) FILTER (WHERE m.status = 'scheduled' AND (m.available_at IS NULL OR m.dispatch_id IS NULL OR m.available_at > now())) AS scheduled,
    count(m.*) FILTER (WHERE m.status = 'scheduled' AND m.dispatch_id IS NOT NULL AND m.available_at <= now()) AS available,
    count(m.*) FILTER (WHERE m.status = 'running') AS running,
    count(m.*) FILTER (WHERE m.status = 'typing') AS typing,
    count(m.*) FILTER (WHERE m.status = 'sending') AS sending,
    count(m.*) FILTER (WHERE m.status = 'retryable') AS retryable,
    count(m.*) FILTER (WHERE m.status = 'completed') AS completed,
    count(m.*) FILTER (WHERE m.status = 'cancelled') AS cancelled,
    count(m.*) FILTER (WHERE m.status = 'discarded') AS discarded,
    count(m.*) AS total,
    min(m.scheduled_at) FILTER (WHERE wmq_is_unfinished(m.status)) AS next_scheduled_at,
    q.last_sequence,
    q.last_sent_at
FROM instances i
JOIN instance_queues q ON q.instance_id = i.id
LEFT JOIN messages m ON m.instance_id = i.id
GROUP BY i.id, q.instance_id;

-- Messages that failed recently: discarded ones, and ones waiting for another attempt.
CREATE VIEW v_recent_failed_jobs AS
SELECT
    m.zaap_id, m.instance_id, m.sequence, m.message_type, m.phone, m.status,
    m.attempts, m.max_attempts, m.last_error, m.enqueued_at, m.finished_at,
    COALESCE(m.finished_at, m.available_at) AS failed_or_retry_at
FROM messages m
WHERE m.status IN ('discarded', 'retryable')
  AND COALESCE(m.finished_at, m.enqueued_at) > now() - interval '24 hours'
ORDER BY COALESCE(m.finished_at, m.enqueued_at) DESC;

-- Instance queues with work pending, and their head.
CREATE VIEW v_active_queues AS
SELECT
    i.id AS instance_id,
    i.name,
    i.paused,
    i.connection_state,
    pending.count AS pending,
    head.zaap_id AS head_zaap_id,
    head.sequence AS head_sequence,
    head.status AS head_status,
    head.available_at AS head_available_at
FROM instances i
JOIN LATERAL (
    SELECT count(*) AS count FROM messages m
     WHERE m.instance_id = i.id AND wmq_is_unfinished(m.status)
) pending ON pending.count > 0
JOIN LATERAL (
    SELECT m.zaap_id, m.sequence, m.status, m.available_at FROM messages m
     WHERE m.instance_id = i.id AND wmq_is_unfinished(m.status)
     ORDER BY m.sequence LIMIT 1
) head ON true;

-- The sequence counters (the seed's message_sequences) with what is still pending.
CREATE VIEW v_message_sequences_summary AS
SELECT
    q.instance_id,
    q.last_sequence,
    q.last_scheduled_at,
    q.last_sent_at,
    (SELECT count(*) FROM messages m
      WHERE m.instance_id = q.instance_id AND wmq_is_unfinished(m.status)) AS pending,
    (SELECT max(m.sequence) FROM messages m
      WHERE m.instance_id = q.instance_id AND m.status = 'completed') AS last_completed_sequence
FROM instance_queues q;
