-- The questions asked of the audit store most, against its views (migrations/0004_views.sql).
-- psql "$DATABASE_URL" -f examples/python/audit_queries.sql -v tenant=acme -v activity=example-call-1

-- What each stage did per tenant and CRM, today and yesterday.
SELECT day, tenant_id, crm, kind, stage, outcome, records
FROM audit_daily
WHERE day >= current_date - 1 AND tenant_id = :'tenant'
ORDER BY day, crm NULLS FIRST, kind, stage, outcome;

-- Failures by reason, and how many still wait for review.
SELECT reason, crm, kind, state, entries, tenants, oldest, newest
FROM dlq_by_reason
ORDER BY state, entries DESC;

-- One activity's history, every stage and dead letter in time order.
SELECT at, stage, crm, outcome, reason, crm_record_id, dlq_id, dlq_state, detail
FROM activity_history
WHERE activity_id = :'activity' AND tenant_id = :'tenant'
ORDER BY at;
