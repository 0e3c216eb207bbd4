-- Views for the questions data teams and support ask of the audit store most (README: Reading
-- crm-sync's topics and store). Views only: they read the tables, change nothing, and cost
-- nothing until queried; filter them by day, tenant or activity so the indexes are used.

-- Per tenant, CRM, kind and UTC day: how many activities each stage handled, by outcome.
-- `crm` is NULL for the stages before the writers.
CREATE VIEW audit_daily AS
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
       tenant_id,
       crm,
       coalesce(kind, 'call') AS kind,
       stage,
       outcome,
       count(*) AS records
FROM audit
GROUP BY 1, 2, 3, 4, 5, 6;

-- Dead letters by reason, CRM and review state: how many, the oldest and the newest.
CREATE VIEW dlq_by_reason AS
SELECT reason,
       crm,
       coalesce(kind, 'call') AS kind,
       state,
       count(*) AS entries,
       count(DISTINCT tenant_id) AS tenants,
       min(failed_at) AS oldest,
       max(failed_at) AS newest
FROM dlq
GROUP BY 1, 2, 3, 4;

-- One activity's history (filter by activity_id, and tenant_id when ids may repeat across
-- tenants): every stage's step and every dead letter with its review state, in time order.
CREATE VIEW activity_history AS
SELECT occurred_at AS at,
       tenant_id,
       call_id AS activity_id,
       coalesce(kind, 'call') AS kind,
       stage,
       crm,
       operation,
       outcome,
       reason,
       detail,
       crm_record_id,
       crm_status,
       NULL::text AS dlq_id,
       NULL::text AS dlq_state,
       trace_id
FROM audit
UNION ALL
SELECT failed_at,
       tenant_id,
       call_id,
       coalesce(kind, 'call'),
       stage,
       crm,
       'dead letter',
       'DEAD_LETTERED',
       reason,
       detail,
       NULL,
       crm_status,
       dlq_id,
       state,
       trace_id
FROM dlq;
