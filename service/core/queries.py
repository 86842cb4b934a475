"""Every statement of the queue the Python side runs, in one place.

The state machine itself is `service/sql/functions/`; these statements call it and read the tables.
Parameters are named (`%(name)s`). The broker's own statements are in workers/broker.py; a
transport's tables (the simulator's record, the WhatsApp session store) are queried by that
transport's module alone.
"""

from service.core.models import PENDING_STATUSES

# The status shown to users: `available` is derived (dispatched, due, waiting for a thread).
# The payload as shown (service/sql/functions/35_payloads.sql): inline media as a short reference,
# so no listing carries it; the stored one is MESSAGE_PAYLOAD.
MESSAGE_COLUMNS = """
    m.zaap_id, m.instance_id, m.sequence, m.message_type, m.phone, wmq_payload_shown(m.payload) AS payload,
    CASE WHEN m.status = 'scheduled' AND m.dispatch_id IS NOT NULL AND m.available_at <= now()
              AND NOT (SELECT paused FROM instances i WHERE i.id = m.instance_id)
         THEN 'available' ELSE m.status END AS status,
    m.delay_message_ms, m.delay_typing_ms, m.scheduled_at, m.available_at,
    m.attempts, m.max_attempts, left(m.last_error, 1000) AS last_error, m.whatsapp_message_id,
    m.enqueued_at, m.started_at, m.sent_at, m.finished_at, m.worker_id, m.phase,
    m.delivered_at, m.read_at, m.played_at
"""

# --- instances -------------------------------------------------------------------------------

INSERT_INSTANCE = """
    WITH inserted AS (
        INSERT INTO instances (id, token, client_token, name, transport, min_send_interval_ms, connection_state)
        SELECT %(id)s, %(token)s, %(client_token)s, %(name)s, t.name, %(min_send_interval_ms)s,
               t.initial_connection_state
          FROM transports t WHERE t.name = %(transport)s
        RETURNING *
    ), queue AS (
        INSERT INTO instance_queues (instance_id, max_per_minute) SELECT id, %(max_per_minute)s FROM inserted
    )
    SELECT * FROM inserted
"""

GET_INSTANCE = "SELECT * FROM instances WHERE id = %(id)s"

TRANSPORT_OF = "SELECT transport FROM instances WHERE id = %(id)s"

LIST_INSTANCES = "SELECT * FROM instances ORDER BY created_at, id"

# Removing an instance withdraws its queued broker messages; its rows go by cascade.
DELETE_INSTANCE = "SELECT wmq_remove_instance(%(id)s, %(force)s) AS pending"

SET_PAUSED = "SELECT wmq_set_paused(%(id)s, %(paused)s, %(queue)s, %(actor)s) AS ok"

# --- enqueue and the worker's transitions (service/sql/functions/30_dispatch.sql, 40_transitions.sql) --

ENQUEUE_ONCE = """
    SELECT * FROM wmq_enqueue_once(
        %(key)s, %(hash)s, %(ttl)s,
        %(zaap_id)s, %(instance_id)s, %(message_type)s, %(phone)s, %(payload)s,
        %(delay_ms)s, %(typing_ms)s, %(jitter_ms)s, %(scheduled_for)s,
        %(max_attempts)s, %(queue)s, %(actor)s)
"""

ENQUEUE = """
    SELECT * FROM wmq_enqueue(
        %(zaap_id)s, %(instance_id)s, %(message_type)s, %(phone)s, %(payload)s,
        %(delay_ms)s, %(typing_ms)s, %(jitter_ms)s, %(scheduled_for)s,
        %(max_attempts)s, %(queue)s, %(actor)s)
"""

# Before the enqueue of a large payload, in its transaction: the instance lock, and the stored
# bytes of its unfinished messages' payloads (service/sql/functions/35_payloads.sql).
PENDING_PAYLOAD_BYTES = "SELECT wmq_pending_payload_bytes(%(instance_id)s, %(key)s, %(ttl)s) AS bytes"

# With, for the logs and the metrics, the due time and (by the database's clock) how late the
# claim is against it and how long since the message was accepted; read beside the function, so
# its signature stays what workers of the previous release expect during a rolling upgrade.
CLAIM = """
    SELECT c.*, m.scheduled_at, m.dispatch_id, clock_timestamp() AS claimed_db_at,
           extract(epoch FROM clock_timestamp() - m.scheduled_at)::float8 AS late_s,
           extract(epoch FROM clock_timestamp() - m.enqueued_at)::float8 AS accepted_s
      FROM wmq_claim(%(zaap_id)s, %(dispatch_id)s, %(worker_id)s) c
      JOIN messages m ON m.zaap_id = c.zaap_id
"""

LEASE_FENCE = """
    SELECT fence FROM session_leases WHERE instance_id = %(instance_id)s AND worker_id = %(worker_id)s
"""

CLAIM_HOLDS = "SELECT wmq_claim_holds(%(zaap_id)s, %(worker_id)s, %(dispatch_id)s) AS checked_at"

START_TYPING = "SELECT wmq_start_typing(%(zaap_id)s, %(worker_id)s, %(queue)s, %(actor)s) AS ok"

COMPLETE = """
    SELECT wmq_complete(%(zaap_id)s, %(worker_id)s, %(whatsapp_id)s, %(queue)s, %(actor)s,
                        %(dispatch_id)s) AS ok
"""

FAIL = """
    SELECT wmq_fail(%(zaap_id)s, %(worker_id)s, %(error)s, %(permanent)s, %(backoff_ms)s,
                    %(queue)s, %(actor)s) AS status
"""

SNOOZE = """
    SELECT wmq_snooze(%(zaap_id)s, %(worker_id)s, %(delay_ms)s, %(reason)s,
                      %(queue)s, %(actor)s) AS ok
"""

# With what the log line names (read beside the function: they do not change on a cancel).
CANCEL = """
    SELECT c.*, m.instance_id, m.sequence, m.attempts, m.scheduled_at
      FROM wmq_cancel(%(zaap_id)s, %(queue)s, %(actor)s, %(presence_actor)s) c
      LEFT JOIN messages m ON m.zaap_id = %(zaap_id)s
"""

CANCEL_ALL = "SELECT wmq_cancel_all(%(instance_id)s, %(queue)s, %(presence_actor)s) AS count"

SET_CONNECTION = """
    SELECT wmq_set_connection(%(instance_id)s, %(state)s, %(detail)s, %(queue)s, %(actor)s) AS ok
"""

# --- routing (service/sql/functions/20_routing.sql) ---------------------------------------------------

QUEUES = "SELECT queue_name, session_bound FROM wmq_queues(%(queue)s)"

SESSION_QUEUE = "SELECT wmq_session_queue(%(queue)s, %(worker_id)s) AS name"

# --- WhatsApp sessions (service/core/session_host.py, session_commands.py, receipts.py) -------

RECORD_WHATSAPP = """
    UPDATE instances
       SET qr_code = CASE WHEN %(has_qr)s THEN %(qr)s WHEN %(state)s = 'qr' THEN qr_code END,
           qr_updated_at = CASE WHEN %(has_qr)s THEN now() WHEN %(state)s = 'qr' THEN qr_updated_at END,
           whatsapp_jid = CASE WHEN %(has_jid)s THEN %(jid)s ELSE whatsapp_jid END,
           owner_worker_id = %(worker_id)s
     WHERE id = %(instance_id)s AND wmq_lease_ok(id, %(worker_id)s)
    RETURNING id
"""

RECORD_RECEIPT = "SELECT wmq_record_receipt(%(instance_id)s, %(ids)s, %(kind)s, %(at)s) AS moved"

INSERT_COMMAND = """
    INSERT INTO instance_commands (instance_id, command, args) VALUES (%(instance_id)s, %(command)s, %(args)s)
    RETURNING id
"""

COMMAND_RESULT = "SELECT done_at, result, error FROM instance_commands WHERE id = %(id)s"

CANCEL_COMMAND = "DELETE FROM instance_commands WHERE id = %(id)s AND done_at IS NULL RETURNING id"

# A worker's round of session leases (service/sql/functions/25_leases.sql): the instances it owns.
LEASE_ROUND = """
    SELECT * FROM wmq_lease_round(%(worker_id)s, %(ttl_s)s, %(heartbeat_ttl_s)s, %(judge)s, %(resend)s,
                                  %(acquire)s, %(stopping)s, %(queue)s, %(actor)s)
"""

#: A worker's renewal on its own, before its round: a round waits for the others' (one at a
#: time), a renewal never does.
RENEW_LEASES = "SELECT wmq_renew_leases(%(worker_id)s, %(ttl_s)s)"

#: The instances of a transport whose session this worker owns, with their WhatsApp ids.
SESSION_INSTANCES = """
    SELECT i.id, i.whatsapp_jid FROM instances i JOIN session_leases l ON l.instance_id = i.id
     WHERE i.transport = %(transport)s AND l.worker_id = %(worker_id)s
"""

TAKE_COMMANDS = """
    SELECT id, instance_id, command, args FROM instance_commands
     WHERE done_at IS NULL AND instance_id = ANY(%(mine)s)
     ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED
"""

FINISH_COMMAND = """
    UPDATE instance_commands SET done_at = now(), result = %(result)s, error = %(error)s WHERE id = %(id)s
"""

INSTANCE_STATUS = """
    SELECT i.*, wmq_worker_alive(i.owner_worker_id, %(ttl_s)s) AS owner_alive
      FROM instances i WHERE i.id = %(id)s
"""

# A worker that died with sessions open leaves them marked as it last saw them.
RELEASE_DEAD_SESSIONS = """
    UPDATE instances
       SET connection_state = 'disconnected', connection_detail = 'the worker holding the session died',
           connection_changed_at = now(), owner_worker_id = NULL
     WHERE transport IN (SELECT name FROM transports WHERE session_bound) AND owner_worker_id IS NOT NULL
       AND NOT wmq_worker_alive(owner_worker_id, %(ttl_s)s)
    RETURNING id
"""

# --- maintenance (workers/maintenance/) ------------------------------------------------------

#: One maintenance leader at a time: held for the cycle's transaction.
MAINTENANCE_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('wmq.maintenance'))"

RESCUE = "SELECT * FROM wmq_rescue(%(ttl_s)s, %(resend)s, %(judge)s, %(queue)s, %(actor)s)"

REDISPATCH_ORPHANS = "SELECT * FROM wmq_redispatch_orphans(%(queue)s, %(actor)s)"

PURGE_FINISHED = "SELECT wmq_purge_finished(%(retention_s)s, %(batch)s) AS purged"

PURGE_IDEMPOTENCY_KEYS = "SELECT wmq_purge_idempotency_keys(%(ttl)s, %(batch)s) AS purged"

PURGE_WEBHOOK_DELIVERIES = "SELECT wmq_purge_webhook_deliveries(%(retention_s)s, %(batch)s) AS purged"

# --- reads -----------------------------------------------------------------------------------

GET_MESSAGE = f"""
    SELECT {MESSAGE_COLUMNS},
           CASE WHEN wmq_is_unfinished(m.status) THEN (
               SELECT count(*) FROM messages p
                WHERE p.instance_id = m.instance_id AND p.sequence <= m.sequence
                  AND wmq_is_unfinished(p.status))
           END AS position
      FROM messages m
     WHERE m.zaap_id = %(zaap_id)s
"""

# `status` filters on the status users see (`available` included); `pending` means unfinished.
_MESSAGES_OF_INSTANCE = f"""
    SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.instance_id = %(instance_id)s) j
     WHERE %(status)s::text IS NULL OR j.status = %(status)s
        OR (%(status)s = 'pending' AND j.status IN ({", ".join(f"'{s}'" for s in PENDING_STATUSES)}))
"""

# The page is chosen first, by sequence alone, so that the rows OFFSET skips are never read
# whole (wmq_payload_shown reads a large payload).
LIST_MESSAGES = f"""
    SELECT {MESSAGE_COLUMNS} FROM messages m
     WHERE m.instance_id = %(instance_id)s AND m.sequence IN (
           SELECT page.sequence FROM ({_MESSAGES_OF_INSTANCE} ORDER BY j.sequence
                                      LIMIT %(limit)s OFFSET %(offset)s) page)
     ORDER BY m.sequence
"""

COUNT_MESSAGES = f"SELECT count(*) AS total FROM ({_MESSAGES_OF_INSTANCE}) counted"

# Z-API's cursor paging: the messages still to send after a sequence, in order.
PENDING_AFTER = f"""
    SELECT {MESSAGE_COLUMNS} FROM messages m
     WHERE m.instance_id = %(instance_id)s AND wmq_is_unfinished(m.status) AND m.sequence > %(after)s
     ORDER BY m.sequence LIMIT %(limit)s
"""

# The payload as stored (inline media included), for a message sent again as a new one.
MESSAGE_PAYLOAD = "SELECT payload FROM messages WHERE zaap_id = %(zaap_id)s"

QUEUE_STATS = "SELECT * FROM v_queue_stats_by_instance WHERE instance_id = %(instance_id)s"

QUEUE_DEPTH = """
    SELECT count(*) AS depth FROM messages WHERE instance_id = %(instance_id)s AND wmq_is_unfinished(status)
"""

ROTATE_TOKEN = "UPDATE instances SET token = %(token)s, updated_at = now() WHERE id = %(id)s RETURNING *"

MESSAGE_EVENTS = """
    SELECT from_status, to_status, at, worker_id, detail
      FROM message_events WHERE zaap_id = %(zaap_id)s ORDER BY id
"""


# --- webhooks (service/sql/functions/70_webhooks.sql; service/core/webhooks.py) ------------------------

WEBHOOK_SETTINGS = "SELECT * FROM wmq_webhook_settings(%(instance_id)s)"

SET_WEBHOOKS = "SELECT * FROM wmq_set_webhooks(%(instance_id)s, %(urls)s, %(secret)s)"

WEBHOOK_DELIVERIES = """
    SELECT id, event, url, body, created_at, attempts, next_attempt_at, last_attempt_at, last_status,
           last_error, delivered_at, given_up_at, posting_since
      FROM webhook_deliveries WHERE instance_id = %(instance_id)s ORDER BY id DESC LIMIT %(limit)s
"""

# Instances whose next delivery is due (by index: instance_webhooks.next_due_at), oldest first,
# each with its head's receiver; leaving out busy instances and blocked receivers.
DUE_WEBHOOK_INSTANCES = """
    SELECT w.instance_id, wmq_webhook_origin(h.url) AS origin
      FROM instance_webhooks w
      CROSS JOIN LATERAL (
          SELECT d.url FROM webhook_deliveries d
           WHERE d.instance_id = w.instance_id AND d.delivered_at IS NULL AND d.given_up_at IS NULL
           ORDER BY d.id LIMIT 1) h
     WHERE w.next_due_at <= now() AND w.instance_id <> ALL(%(busy)s::uuid[])
       AND wmq_webhook_origin(h.url) <> ALL(%(blocked)s::text[])
     ORDER BY w.next_due_at
     LIMIT %(limit)s
"""

WEBHOOK_CLAIM = "SELECT * FROM wmq_webhook_claim(%(instance_id)s, %(hold_s)s)"

WEBHOOK_OUTCOME = """
    SELECT wmq_webhook_outcome(%(id)s, %(attempt)s, %(status)s, %(error)s, %(delivered)s, %(backoff_s)s,
                               %(give_up)s) AS recorded
"""

ROTATE_WEBHOOK_SECRET = """
    INSERT INTO instance_webhooks AS w (instance_id, secret) VALUES (%(instance_id)s, %(secret)s)
    ON CONFLICT (instance_id) DO UPDATE SET
        previous_secret = w.secret, previous_secret_until = now() + make_interval(secs => %(grace_s)s),
        secret = EXCLUDED.secret, updated_at = now()
    RETURNING *
"""

# --- metrics (service/core/gauges.py) ------------------------------------------------------------

METRICS_SNAPSHOT = """
    SELECT
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM (
            SELECT status, count(*) AS n FROM messages GROUP BY status) s) AS statuses,
        (SELECT count(*) FROM instances WHERE connection_state = 'connected') AS connected,
        (SELECT count(*) FROM instances WHERE connection_state <> 'connected') AS not_connected,
        (SELECT count(*) FROM instances WHERE paused) AS paused,
        (SELECT count(*) FROM instances i WHERE i.connection_state <> 'connected' AND EXISTS (
            SELECT 1 FROM messages m WHERE m.instance_id = i.id AND wmq_is_unfinished(m.status)))
            AS disconnected_with_backlog,
        (SELECT coalesce(extract(epoch FROM now() - min(m.available_at)), 0) FROM messages m
          JOIN instances i ON i.id = m.instance_id
         WHERE m.status IN ('scheduled', 'retryable') AND m.dispatch_id IS NOT NULL AND m.available_at <= now()
           AND NOT i.paused) AS oldest_due_s,
        (SELECT count(*) FROM dramatiq.worker WHERE heartbeat_at > now() - make_interval(secs => %(ttl_s)s))
            AS live_workers,
        (SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NULL AND given_up_at IS NULL)
            AS webhooks_pending
"""

# --- the operator's overview (service/core/overview.py; the dashboard) -----------------------

#: Every instance with what an operator looks at first. `stuck`: not paused, with messages to
#: send, and either its next message overdue for longer than the threshold or not connected.
OVERVIEW_INSTANCES = """
    WITH pending AS (
        SELECT m.instance_id, count(*) AS depth, min(m.scheduled_at) AS next_due_at,
               min(m.scheduled_at) FILTER (WHERE m.scheduled_at <= now()) AS overdue_since,
               (array_agg(m.last_error ORDER BY m.sequence DESC)
                   FILTER (WHERE m.last_error IS NOT NULL))[1] AS last_error
          FROM messages m WHERE wmq_is_unfinished(m.status) GROUP BY m.instance_id
    ), sent AS (
        SELECT m.instance_id, count(*) AS sent_last_hour FROM messages m
         WHERE m.finished_at > now() - interval '1 hour' AND m.status = 'completed' GROUP BY m.instance_id
    )
    SELECT i.id, i.name, i.transport, i.paused, i.connection_state, i.connection_detail,
           coalesce(p.depth, 0) AS depth, p.next_due_at, p.overdue_since, p.last_error,
           coalesce(s.sent_last_hour, 0) AS sent_last_hour, q.last_sent_at,
           coalesce(NOT i.paused AND p.depth > 0 AND (
                p.overdue_since < now() - make_interval(secs => %(stuck_after_s)s)
             OR i.connection_state <> 'connected'), false) AS stuck
      FROM instances i
      JOIN instance_queues q ON q.instance_id = i.id
      LEFT JOIN pending p ON p.instance_id = i.id
      LEFT JOIN sent s ON s.instance_id = i.id
     WHERE %(instance_id)s::uuid IS NULL OR i.id = %(instance_id)s
"""

#: The last finished messages of one instance, newest first (its pending ones: LIST_MESSAGES).
RECENT_FINISHED = f"""
    SELECT {MESSAGE_COLUMNS} FROM messages m
     WHERE m.instance_id = %(instance_id)s AND NOT wmq_is_unfinished(m.status)
     ORDER BY m.sequence DESC LIMIT %(limit)s
"""

#: Discarded messages of the last day with their reasons (the seed's view), newest first.
RECENT_DISCARDED = """
    SELECT f.*, i.name AS instance_name, wmq_payload_shown(m.payload) AS payload
      FROM v_recent_failed_jobs f JOIN instances i ON i.id = f.instance_id JOIN messages m ON m.zaap_id = f.zaap_id
     WHERE f.status = 'discarded' ORDER BY f.finished_at DESC LIMIT %(limit)s
"""

#: Per minute over the last hour: messages sent and discarded, and the lateness of the sent
#: ones (send start minus due time) at p50 and p99.
THROUGHPUT = """
    SELECT date_trunc('minute', m.finished_at) AS minute,
           count(*) FILTER (WHERE m.status = 'completed') AS sent,
           count(*) FILTER (WHERE m.status = 'discarded') AS discarded,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(0, extract(epoch FROM m.started_at - m.scheduled_at)))
               FILTER (WHERE m.status = 'completed') AS lateness_p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY greatest(0, extract(epoch FROM m.started_at - m.scheduled_at)))
               FILTER (WHERE m.status = 'completed') AS lateness_p99
      FROM messages m
     WHERE m.finished_at > now() - interval '1 hour' AND m.status IN ('completed', 'discarded')
     GROUP BY 1 ORDER BY 1
"""

#: The broker's workers: heartbeat, alive, the session leases each holds, messages in flight.
WORKERS = """
    SELECT w.worker_id, w.heartbeat_at, extract(epoch FROM now() - w.heartbeat_at) AS heartbeat_age_s,
           wmq_worker_alive(w.worker_id, %(ttl_s)s) AS alive,
           (SELECT count(*) FROM session_leases l
             WHERE l.worker_id = w.worker_id AND l.expires_at > now()) AS sessions,
           (SELECT count(*) FROM messages m
             WHERE m.worker_id = w.worker_id AND m.status IN ('running', 'typing', 'sending')) AS in_flight,
           -- neonize opens a store pool per client, named `wmq-store:<instance>/<client number>`
           -- (workers/transports/neonize/store.py): counted for the worker that holds the lease.
           (SELECT count(*) FROM pg_stat_activity a JOIN session_leases l
                ON l.instance_id::text = split_part(split_part(a.application_name, ':', 2), '/', 1)
             WHERE a.application_name LIKE 'wmq-store:%%' AND l.worker_id = w.worker_id) AS store_connections
      FROM dramatiq.worker w ORDER BY w.heartbeat_at DESC
"""
