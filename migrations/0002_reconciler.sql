-- The reconciler (DESIGN §8): what it reads from the audit store, and its parity reports.

-- "What did we write for this tenant in this CRM since T": the reconciler's pass. Partial,
-- so it holds the successful writes only (a tenth of the rows or less).
CREATE INDEX audit_written ON audit (tenant_id, crm, occurred_at)
    WHERE stage = 'WRITER' AND operation = 'write' AND outcome = 'SUCCEEDED';

-- One row per reconciliation pass of one tenant in one CRM: the parity report
-- (`crm-sync reconcile --report` prints the latest per tenant and CRM).
CREATE TABLE reconcile_runs (
    run_id        text        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    crm           text        NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    -- Writes made since this time were checked.
    window_from   timestamptz NOT NULL,
    checked       integer     NOT NULL,
    matching      integer     NOT NULL,
    drifted       integer     NOT NULL,
    repaired      integer     NOT NULL,
    dead_lettered integer     NOT NULL,
    -- Drift left for the next pass: a write in flight, a source message no longer kept.
    deferred      integer     NOT NULL,
    -- Count per kind of finding (deleted, missing, field_changed, contact_merged, ...).
    findings      jsonb       NOT NULL DEFAULT '{}',
    -- Contract fields the CRM's schema no longer has.
    missing_fields text[]     NOT NULL DEFAULT '{}',
    -- Why the pass stopped early (CRM unreachable, credentials), if it did.
    error         text
);
CREATE INDEX reconcile_runs_latest ON reconcile_runs (tenant_id, crm, finished_at DESC);
