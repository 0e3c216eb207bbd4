-- Support's lookups (`crm-sync trace --phone/--email/--agent/--since/--until`, issue 21):
-- which activities a customer's number or address, or an agent, took part in, and when.
--
-- One row per (keyed name, activity version): the normaliser names each activity's customer
-- numbers, participants' addresses and its agent (id and address) by keyed hashes
-- (`crm_common::key_names`, purpose "audit lookups", a salt per tenant) in its audit
-- record's `lookup` attribute; the audit-sink stores them here beside the audit row. No
-- number or address is kept in clear: `crm-sync trace` hashes what it is asked for the same
-- way. Partitioned by day on the audit row's time like `audit`, so retention drops both
-- alike.
CREATE TABLE audit_lookup (
    name        text        NOT NULL,
    tenant_id   text        NOT NULL,
    -- When the activity happened (a call's start, an email's sending, a meeting's start).
    activity_at timestamptz NOT NULL,
    activity_id text        NOT NULL,
    kind        text        NOT NULL,
    -- The audit row's time (the partition key).
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (name, tenant_id, activity_at, activity_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- "Every activity of this tenant between T1 and T2", newest first.
CREATE INDEX audit_lookup_time ON audit_lookup (tenant_id, activity_at);
