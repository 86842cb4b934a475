-- Webhooks against hostile receivers (issue 20). A post is recorded as started before the HTTP
-- call and its outcome after, with no transaction or lock held across the call: `posting_since`
-- marks a claimed delivery whose outcome is not recorded yet, and `unfinished_attempts` counts
-- claims that never got one (their poster died mid-post), so a delivery that kills its poster is
-- given up instead of killing the next one. A rotated signing secret stays valid, beside the new
-- one, until `previous_secret_until`.
ALTER TABLE webhook_deliveries ADD COLUMN posting_since timestamptz;
ALTER TABLE webhook_deliveries ADD COLUMN unfinished_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE instance_webhooks ADD COLUMN previous_secret text;
ALTER TABLE instance_webhooks ADD COLUMN previous_secret_until timestamptz;

-- When the instance's next delivery (its head) is due: the posters look for due instances here,
-- by index, instead of among every pending delivery (an instance whose head is held or backing
-- off may have thousands behind it). Kept by the functions of 70_webhooks.sql.
ALTER TABLE instance_webhooks ADD COLUMN next_due_at timestamptz;
UPDATE instance_webhooks w SET next_due_at = (
    SELECT d.next_attempt_at FROM webhook_deliveries d
     WHERE d.instance_id = w.instance_id AND d.delivered_at IS NULL AND d.given_up_at IS NULL
     ORDER BY d.id LIMIT 1);
CREATE INDEX instance_webhooks_due ON instance_webhooks (next_due_at) WHERE next_due_at IS NOT NULL;
