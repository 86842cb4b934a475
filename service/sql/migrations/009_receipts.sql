-- WhatsApp receipts of a sent message (issue 12): when the phone got it, when it was read, when
-- a voice note was played. The first of each is kept; they are found by the id WhatsApp gave.
ALTER TABLE messages ADD COLUMN delivered_at timestamptz, ADD COLUMN read_at timestamptz,
                     ADD COLUMN played_at timestamptz;
CREATE INDEX messages_whatsapp_id ON messages (instance_id, whatsapp_message_id)
    WHERE whatsapp_message_id IS NOT NULL;
