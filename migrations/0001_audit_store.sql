-- The audit store (DESIGN §8): sync.audit and sync.dlq as the audit-sink keeps them.
-- Applied in file-name order by the audit-sink (and `crm-sync trace|dlq`) at start; each
-- file once, recorded in schema_migrations.

-- One row per AuditRecord. Partitioned by day on occurred_at, so retention drops whole
-- days (DROP TABLE of a partition) instead of deleting rows. A redelivered record carries the
-- same audit_id and occurred_at: the primary key keeps it once.
CREATE TABLE audit (
    audit_id             text        NOT NULL,
    occurred_at          timestamptz NOT NULL,
    tenant_id            text        NOT NULL,
    call_id              text,
    crm                  text,
    stage                text        NOT NULL,
    operation            text        NOT NULL,
    outcome              text        NOT NULL,
    reason               text,
    detail               text        NOT NULL,
    attempt              integer     NOT NULL,
    version              bigint,
    idempotency_key      text,
    crm_status           integer,
    crm_response_excerpt text,
    crm_record_id        text,
    latency_ms           bigint,
    input_topic          text        NOT NULL,
    input_partition      integer     NOT NULL,
    input_offset         bigint      NOT NULL,
    trace_id             text        NOT NULL,
    attributes           jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (audit_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- `crm-sync trace <call_id> [--tenant T]`: a call's rows in time order.
CREATE INDEX audit_call ON audit (call_id, tenant_id, occurred_at);
-- Failures by reason over time (dashboards, "why did these fail last night").
CREATE INDEX audit_reason ON audit (reason, occurred_at) WHERE reason IS NOT NULL;

-- One row per DeadLetter, with its review state: open, replayed or acknowledged.
CREATE TABLE dlq (
    dlq_id               text        PRIMARY KEY,
    failed_at            timestamptz NOT NULL,
    tenant_id            text        NOT NULL,
    call_id              text,
    crm                  text,
    stage                text        NOT NULL,
    reason               text        NOT NULL,
    detail               text        NOT NULL,
    source_topic         text        NOT NULL,
    source_partition     integer     NOT NULL,
    source_offset        bigint      NOT NULL,
    source_key           bytea,
    payload              bytea       NOT NULL,
    attempt              integer     NOT NULL,
    replay_count         integer     NOT NULL,
    crm_status           integer,
    crm_response_excerpt text,
    trace_id             text        NOT NULL,
    state                text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'replayed', 'acknowledged')),
    state_at             timestamptz,
    state_by             text,
    state_note           text
);
CREATE INDEX dlq_reason ON dlq (reason, failed_at);
CREATE INDEX dlq_tenant ON dlq (tenant_id, crm, failed_at);
CREATE INDEX dlq_call ON dlq (call_id);
CREATE INDEX dlq_open ON dlq (failed_at) WHERE state = 'open';

-- Messages on sync.audit or sync.dlq that are not what the topic promises: kept, not lost.
CREATE TABLE sink_rejects (
    topic       text        NOT NULL,
    part        integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    payload     bytea,
    error       text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, part, "offset")
);
