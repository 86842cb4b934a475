-- Webhook URLs one row per (instance, event) (issue 22): a new event is an entry of EVENTS
-- (service/core/webhooks.py) and the place it fires, not a column, a CASE and four keys. The
-- URLs set so far are carried over. The old columns are left in place, unread and unwritten, so
-- that API pods of the previous release keep answering during a rolling update; a later
-- migration drops them.
CREATE TABLE instance_webhook_urls (
    instance_id  uuid NOT NULL REFERENCES instance_webhooks (instance_id) ON DELETE CASCADE,
    event        text NOT NULL,
    url          text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, event)
);
INSERT INTO instance_webhook_urls (instance_id, event, url, updated_at)
SELECT w.instance_id, e.event, e.url, w.updated_at
  FROM instance_webhooks w
 CROSS JOIN LATERAL (VALUES ('delivery', w.delivery_url), ('message-status', w.message_status_url),
                            ('connected', w.connected_url), ('disconnected', w.disconnected_url)) AS e (event, url)
 WHERE e.url IS NOT NULL;
COMMENT ON COLUMN instance_webhooks.delivery_url IS 'unused since 015_webhook_urls.sql';
COMMENT ON COLUMN instance_webhooks.message_status_url IS 'unused since 015_webhook_urls.sql';
COMMENT ON COLUMN instance_webhooks.connected_url IS 'unused since 015_webhook_urls.sql';
COMMENT ON COLUMN instance_webhooks.disconnected_url IS 'unused since 015_webhook_urls.sql';

-- Which events exist is EVENTS' to say, not a constraint's.
ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_event_check;
