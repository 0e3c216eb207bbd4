-- Emails and meetings beside calls (issue 18): every audit row and dead letter names the
-- activity's kind. NULL in rows stored before kinds existed, which are all calls; `call_id`
-- holds the activity's source id (call id, Message-ID, meeting source id).
ALTER TABLE audit ADD COLUMN kind text;
ALTER TABLE dlq ADD COLUMN kind text;

-- "Show me the failed emails": the DLQ review screen filters by kind.
CREATE INDEX dlq_kind ON dlq (kind, failed_at) WHERE kind IS NOT NULL;
