-- Message payloads as the API and the dashboard show them, and the bytes an instance has waiting
-- (issue 20: a hostile tenant's inline media must not make every listing carry megabytes, nor
-- fill the database).

-- A string as a listing shows it. Inline media of more than 1,024 characters (a data: URI, or
-- bare base64: letters, digits, +/= and line breaks, no spaces) becomes a short reference,
-- `inline image/png, 123456 bytes` (`inline base64, …` for bare base64; the size decoded,
-- from the base64 length: over by 1 or 2 bytes when padded); another string of more than 1,024
-- characters, its first 1,000 and `... (N characters)`. http(s) URLs (at most 2,048 characters,
-- as the API takes them) and shorter strings stay as they are. Reads the value's first 1,024
-- characters and its length only (octet_length is O(1)).
CREATE FUNCTION wmq_text_shown(p_value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_head text;
    v_type text;
    v_encoded bigint;
BEGIN
    IF octet_length(p_value) <= 1024 THEN
        RETURN p_value;
    END IF;
    v_head := left(p_value, 1024);
    IF octet_length(p_value) <= 2048 AND v_head ~ '^https?://' THEN
        RETURN p_value;
    END IF;
    v_type := substring(v_head FROM '^data:([A-Za-z0-9_.+-]+/[A-Za-z0-9_.+-]+)[^,]*;base64,');
    IF v_type IS NOT NULL THEN
        v_encoded := octet_length(p_value) - position(',' IN v_head);
    ELSIF v_head ~ '^[A-Za-z0-9+/=\r\n]+$' THEN  -- base64, maybe in lines; no spaces: a text has some
        v_type := 'base64';
        v_encoded := octet_length(p_value);
    ELSIF length(p_value) <= 1024 THEN  -- longer in bytes than in characters
        RETURN p_value;
    ELSE
        RETURN left(p_value, 1000) || format('... (%s characters)', length(p_value));
    END IF;
    RETURN format('inline %s, %s bytes', v_type, v_encoded / 4 * 3);
END
$$;

-- The payload with every top-level string as wmq_text_shown shows it, and every top-level
-- object or array whose JSON is over 8 KiB as `inline object, N bytes` (or `array`). A payload's
-- top-level keys are its type's fields (service/core/message_types.py: six at most), so what
-- this returns is at most ~14 KiB whatever was stored.
CREATE FUNCTION wmq_payload_trimmed(p_payload jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    IF jsonb_typeof(p_payload) <> 'object' THEN
        RETURN p_payload;
    END IF;
    RETURN COALESCE((
        SELECT jsonb_object_agg(e.key, CASE
                   WHEN jsonb_typeof(e.value) = 'string' THEN to_jsonb(wmq_text_shown(e.value #>> '{}'))
                   WHEN jsonb_typeof(e.value) IN ('object', 'array') AND octet_length(e.value::text) > 8192
                       THEN to_jsonb(format('inline %s, %s bytes', jsonb_typeof(e.value),
                                            octet_length(e.value::text)))
                   ELSE e.value END)
          FROM jsonb_each(p_payload) e), '{}'::jsonb);
END
$$;

-- What every listing and message read selects instead of the payload (service/core/queries.py
-- MESSAGE_COLUMNS), so the API never receives inline media. A payload stored uncompressed in at
-- most 1,024 bytes holds no longer string: it is returned as it is, without a look inside (most
-- messages). A LANGUAGE sql function of one expression, inlined into the listing's statement, so
-- pg_column_size and pg_column_compression see the stored column, not a copy.
CREATE FUNCTION wmq_payload_shown(p_payload jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN pg_column_size(p_payload) <= 1024 AND pg_column_compression(p_payload) IS NULL
                THEN p_payload ELSE wmq_payload_trimmed(p_payload) END
$$;

-- The stored bytes (pg_column_size: as stored, compressed or not, read without detoasting) of the
-- payloads of an instance's unfinished messages, under the instance lock (I1), so that the
-- enqueue that follows in the same transaction adds to exactly this (service/core/enqueue.py, for
-- large payloads only). 0 when `p_key` was used for this instance within `p_ttl`: that enqueue
-- replays its first answer or is refused, storing nothing. NULL for an unknown instance.
CREATE FUNCTION wmq_pending_payload_bytes(p_instance uuid, p_key text, p_ttl interval) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT wmq_lock_instance(p_instance) THEN
        RETURN NULL;
    END IF;
    IF p_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM idempotency_keys k
         WHERE k.instance_id = p_instance AND k.key = p_key AND k.created_at >= now() - p_ttl) THEN
        RETURN 0;
    END IF;
    RETURN (SELECT COALESCE(sum(pg_column_size(m.payload)), 0) FROM messages m
             WHERE m.instance_id = p_instance AND wmq_is_unfinished(m.status));
END
$$;
