-- WhatsApp receipts of sent messages: the first delivery, read and play of each. A read implies
-- the delivery (a phone that read it had it), a play both. Returns how many messages moved.
CREATE OR REPLACE FUNCTION wmq_record_receipt(p_instance uuid, p_ids text[], p_kind text, p_at timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    IF p_kind NOT IN ('delivered', 'read', 'played') THEN
        RAISE EXCEPTION 'unknown receipt kind %', p_kind USING ERRCODE = '22023';
    END IF;
    UPDATE messages
       SET delivered_at = COALESCE(delivered_at, p_at),
           read_at = CASE WHEN p_kind IN ('read', 'played') THEN COALESCE(read_at, p_at) ELSE read_at END,
           played_at = CASE WHEN p_kind = 'played' THEN COALESCE(played_at, p_at) ELSE played_at END
     WHERE instance_id = p_instance AND whatsapp_message_id = ANY (p_ids)
       AND (delivered_at IS NULL
            OR (p_kind IN ('read', 'played') AND read_at IS NULL)
            OR (p_kind = 'played' AND played_at IS NULL));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;
