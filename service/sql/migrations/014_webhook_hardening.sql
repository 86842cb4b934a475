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
