//! The audit store (DESIGN §8) in PostgreSQL: what the audit-sink writes and what
//! `crm-sync trace` and `crm-sync dlq` read. The schema is `migrations/*.sql`, applied in
//! order, once each, under an advisory lock (several sinks may start together).
//!
//! `audit` is partitioned by day on `occurred_at`: a batch first makes sure its days have
//! partitions, and retention drops whole days. Inserts are one statement per table per
//! batch (`UNNEST` of column arrays) inside one transaction, `ON CONFLICT DO NOTHING`: a
//! redelivered record is stored once, and the sink commits its offsets only after the
//! transaction has.

use crate::events::{AuditRecord, DeadLetter};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// The migrations, in order (compiled in, so every binary carries the schema it expects).
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_audit_store", include_str!("../../../migrations/0001_audit_store.sql")),
    ("0002_reconciler", include_str!("../../../migrations/0002_reconciler.sql")),
    ("0003_activity_kind", include_str!("../../../migrations/0003_activity_kind.sql")),
    ("0004_views", include_str!("../../../migrations/0004_views.sql")),
    ("0005_audit_lookup", include_str!("../../../migrations/0005_audit_lookup.sql")),
];

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact(url: &str) -> String {
    crate::redis_conn::redact_url(url)
}

/// `base` with its database replaced by `db`.
pub fn database_url(base: &str, db: &str) -> String {
    match url::Url::parse(base) {
        Ok(mut u) => {
            u.set_path(&format!("/{db}"));
            u.to_string()
        }
        Err(_) => base.to_string(),
    }
}

/// Connects to PostgreSQL and drives the connection on the current runtime. TLS as libpq
/// does it: with `sslmode=require` in the URL the session is encrypted, and the server's
/// certificate is checked against `PGSSLROOTCERT` when that names a CA file (libpq's
/// verify-ca); otherwise (`disable`, `prefer`) plain, as the machine's local servers expect.
pub async fn pg_connect(url: &str) -> anyhow::Result<Client> {
    let fail = |e: tokio_postgres::Error| anyhow::anyhow!("PostgreSQL at {}: {e}", redact(url));
    let cfg: tokio_postgres::Config = url.parse().map_err(fail)?;
    if cfg.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        let (client, conn) = cfg.connect(NoTls).await.map_err(fail)?;
        drive(conn);
        return Ok(client);
    }
    let mut tls = native_tls::TlsConnector::builder();
    match std::env::var("PGSSLROOTCERT").ok().filter(|p| !p.is_empty()) {
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| anyhow::anyhow!("PGSSLROOTCERT {path}: {e}"))?;
            // Only this CA, as libpq: not the system's roots as well.
            tls.add_root_certificate(native_tls::Certificate::from_pem(&pem)?)
                .disable_built_in_roots(true)
                .danger_accept_invalid_hostnames(true);
        }
        None => {
            tls.danger_accept_invalid_certs(true);
        }
    }
    let (client, conn) = cfg.connect(postgres_native_tls::MakeTlsConnector::new(tls.build()?)).await.map_err(fail)?;
    drive(conn);
    Ok(client)
}

/// Runs a connection's I/O on the current runtime until it ends.
fn drive(conn: impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::error!(error = %e, "PostgreSQL connection ended");
        }
    });
}

/// Runs one statement on `base`'s server (CREATE/DROP DATABASE cannot run in a transaction).
async fn on_server(base: &str, sql: &str) -> anyhow::Result<()> {
    let client = pg_connect(base).await?;
    client.batch_execute(sql).await.map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
    Ok(())
}

/// A database of its own for a dev run, a benchmark or a test, on `base`'s server. `db` must
/// be a plain identifier.
pub async fn create_database(base: &str, db: &str) -> anyhow::Result<String> {
    anyhow::ensure!(db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "database name {db:?}");
    on_server(base, &format!("CREATE DATABASE {db}")).await?;
    Ok(database_url(base, db))
}

pub async fn drop_database(base: &str, db: &str) -> anyhow::Result<()> {
    anyhow::ensure!(db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "database name {db:?}");
    on_server(base, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await
}

pub struct AuditStore {
    client: Client,
    /// Days (since the epoch) whose partition is known to exist.
    days: HashSet<i64>,
}

/// A message on an audit topic that is not what the topic promises.
pub struct Reject {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub error: String,
}

pub fn ts(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The UTC day (since the epoch) of a time in ms.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

fn day_date(day: i64) -> NaiveDate {
    DateTime::from_timestamp(day * 86_400, 0).unwrap_or_default().date_naive()
}

/// `audit_lookup` rows, by column.
#[derive(Default)]
struct LookupRows {
    name: Vec<String>,
    tenant: Vec<String>,
    activity_at: Vec<DateTime<Utc>>,
    activity_id: Vec<String>,
    kind: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
}

/// The tables partitioned by day on `occurred_at`: made and dropped a day at a time together.
const PARTITIONED: [&str; 2] = ["audit", "audit_lookup"];

/// The audit partition holding a day.
pub fn partition_name(day: i64) -> String {
    partition_of("audit", day)
}

/// `parent`'s partition holding a day.
fn partition_of(parent: &str, day: i64) -> String {
    format!("{parent}_p{}", day_date(day).format("%Y%m%d"))
}

impl AuditStore {
    /// Connects; the connection's driver runs on the current runtime.
    pub async fn connect(url: &str) -> anyhow::Result<AuditStore> {
        Ok(AuditStore { client: pg_connect(url).await?, days: HashSet::new() })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Applies the migrations not applied yet; returns their names.
    pub async fn migrate(&mut self) -> anyhow::Result<Vec<String>> {
        let tx = self.client.transaction().await?;
        // One migrator at a time, across processes.
        tx.execute("SELECT pg_advisory_xact_lock(7240518311)", &[]).await?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            &[],
        )
        .await?;
        let done: HashSet<String> = tx.query("SELECT name FROM schema_migrations", &[]).await?.iter().map(|r| r.get(0)).collect();
        let mut applied = vec![];
        for (name, sql) in MIGRATIONS {
            if done.contains(*name) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| anyhow::anyhow!("migration {name}: {e}"))?;
            tx.execute("INSERT INTO schema_migrations (name) VALUES ($1)", &[name]).await?;
            applied.push(name.to_string());
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Makes sure every day of `times_ms` has its partition, in `audit` and in
    /// `audit_lookup` alike.
    pub async fn ensure_partitions(&mut self, times_ms: impl IntoIterator<Item = i64>) -> Result<(), tokio_postgres::Error> {
        let wanted: HashSet<i64> = times_ms.into_iter().map(day_of).filter(|d| !self.days.contains(d)).collect();
        for day in wanted {
            let (from, to) = (day_date(day), day_date(day + 1));
            for parent in PARTITIONED {
                let name = partition_of(parent, day);
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {parent} FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')"
                );
                if let Err(e) = self.client.batch_execute(&sql).await {
                    // Another sink made it in the meantime: fine. Anything else is an error.
                    let exists = self.client.query_opt("SELECT 1 FROM pg_class WHERE relname = $1", &[&name]).await?.is_some();
                    if !exists {
                        return Err(e);
                    }
                }
            }
            self.days.insert(day);
        }
        Ok(())
    }

    /// Stores a batch in one transaction; returns (audit rows, DLQ rows) actually inserted
    /// (a redelivered record counts 0).
    pub async fn insert(
        &mut self,
        audit: &[AuditRecord],
        dlq: &[DeadLetter],
        rejects: &[Reject],
    ) -> Result<(u64, u64), tokio_postgres::Error> {
        let r = self.insert_once(audit, dlq, rejects).await;
        if r.is_err() {
            // A day this process knew may have been dropped by another sink's purge (or the
            // database replaced): look again on the retry.
            self.days.clear();
        }
        r
    }

    async fn insert_once(
        &mut self,
        audit: &[AuditRecord],
        dlq: &[DeadLetter],
        rejects: &[Reject],
    ) -> Result<(u64, u64), tokio_postgres::Error> {
        self.ensure_partitions(audit.iter().map(|a| a.occurred_at)).await?;
        let tx = self.client.transaction().await?;
        let a = if audit.is_empty() {
            0
        } else {
            let col = |f: &dyn Fn(&AuditRecord) -> Option<String>| audit.iter().map(f).collect::<Vec<_>>();
            let s = |v: &str| Some(v.to_string());
            let ids = col(&|r| s(&r.audit_id));
            let at: Vec<DateTime<Utc>> = audit.iter().map(|r| ts(r.occurred_at)).collect();
            let tenant = col(&|r| s(&r.tenant_id));
            let call = col(&|r| r.call_id.clone());
            let crm = col(&|r| r.crm.map(|c| c.as_str().to_string()));
            let stage = col(&|r| s(r.stage.as_str()));
            let op = col(&|r| s(&r.operation));
            let outcome = col(&|r| s(r.outcome.as_str()));
            let reason = col(&|r| r.reason.clone());
            let detail = col(&|r| s(&r.detail));
            let attempt: Vec<i32> = audit.iter().map(|r| r.attempt).collect();
            let version: Vec<Option<i64>> = audit.iter().map(|r| r.version).collect();
            let key = col(&|r| r.idempotency_key.clone());
            let status: Vec<Option<i32>> = audit.iter().map(|r| r.crm_status).collect();
            let excerpt = col(&|r| r.crm_response_excerpt.clone());
            let record = col(&|r| r.crm_record_id.clone());
            let latency: Vec<Option<i64>> = audit.iter().map(|r| r.latency_ms).collect();
            let topic = col(&|r| s(&r.input_topic));
            let part: Vec<i32> = audit.iter().map(|r| r.input_partition).collect();
            let offset: Vec<i64> = audit.iter().map(|r| r.input_offset).collect();
            let trace = col(&|r| s(&r.trace_id));
            let attrs: Vec<serde_json::Value> = audit.iter().map(|r| serde_json::to_value(&r.attributes).unwrap_or_default()).collect();
            let kind = col(&|r| r.kind.map(|k| k.as_str().to_string()));
            tx.execute(
                "INSERT INTO audit (audit_id, occurred_at, tenant_id, call_id, crm, stage, operation, outcome, reason, detail, attempt, version, \
                 idempotency_key, crm_status, crm_response_excerpt, crm_record_id, latency_ms, input_topic, input_partition, input_offset, trace_id, attributes, kind) \
                 SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                 $10::text[], $11::int4[], $12::int8[], $13::text[], $14::int4[], $15::text[], $16::text[], $17::int8[], $18::text[], $19::int4[], $20::int8[], \
                 $21::text[], $22::jsonb[], $23::text[]) ON CONFLICT DO NOTHING",
                &[&ids, &at, &tenant, &call, &crm, &stage, &op, &outcome, &reason, &detail, &attempt, &version, &key, &status, &excerpt, &record, &latency, &topic, &part, &offset, &trace, &attrs, &kind],
            )
            .await?
        };
        // The normaliser's records name what the activity can be looked up by (`lookups`).
        let mut l = LookupRows::default();
        for r in audit.iter().filter(|r| r.stage == crate::events::Stage::Normaliser) {
            let (Some(names), Some(id)) = (r.attributes.get(crate::lookups::ATTRIBUTE), r.call_id.as_ref()) else { continue };
            let at = r.attributes.get(crate::lookups::ACTIVITY_AT).and_then(|t| t.parse::<i64>().ok()).unwrap_or(r.occurred_at);
            for name in crate::lookups::names_in(names) {
                l.name.push(name.to_ascii_lowercase());
                l.tenant.push(r.tenant_id.clone());
                l.activity_at.push(ts(at));
                l.activity_id.push(id.clone());
                l.kind.push(r.kind.map_or("call", |k| k.as_str()).to_string());
                l.occurred_at.push(ts(r.occurred_at));
            }
        }
        if !l.name.is_empty() {
            tx.execute(
                "INSERT INTO audit_lookup (name, tenant_id, activity_at, activity_id, kind, occurred_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::timestamptz[]) ON CONFLICT DO NOTHING",
                &[&l.name, &l.tenant, &l.activity_at, &l.activity_id, &l.kind, &l.occurred_at],
            )
            .await?;
        }
        let d = if dlq.is_empty() {
            0
        } else {
            let col = |f: &dyn Fn(&DeadLetter) -> Option<String>| dlq.iter().map(f).collect::<Vec<_>>();
            let s = |v: &str| Some(v.to_string());
            let ids = col(&|r| s(&r.dlq_id));
            let at: Vec<DateTime<Utc>> = dlq.iter().map(|r| ts(r.failed_at)).collect();
            let tenant = col(&|r| s(&r.tenant_id));
            let call = col(&|r| r.call_id.clone());
            let crm = col(&|r| r.crm.map(|c| c.as_str().to_string()));
            let stage = col(&|r| s(r.stage.as_str()));
            let reason = col(&|r| s(r.reason.as_str()));
            let detail = col(&|r| s(&r.detail));
            let topic = col(&|r| s(&r.source_topic));
            let part: Vec<i32> = dlq.iter().map(|r| r.source_partition).collect();
            let offset: Vec<i64> = dlq.iter().map(|r| r.source_offset).collect();
            let key: Vec<Option<Vec<u8>>> = dlq.iter().map(|r| r.source_key.clone()).collect();
            let payload: Vec<Vec<u8>> = dlq.iter().map(|r| r.payload.clone()).collect();
            let attempt: Vec<i32> = dlq.iter().map(|r| r.attempt).collect();
            let replays: Vec<i32> = dlq.iter().map(|r| r.replay_count).collect();
            let status: Vec<Option<i32>> = dlq.iter().map(|r| r.crm_status).collect();
            let excerpt = col(&|r| r.crm_response_excerpt.clone());
            let trace = col(&|r| s(&r.trace_id));
            let kind = col(&|r| r.kind.map(|k| k.as_str().to_string()));
            tx.execute(
                "INSERT INTO dlq (dlq_id, failed_at, tenant_id, call_id, crm, stage, reason, detail, source_topic, source_partition, source_offset, \
                 source_key, payload, attempt, replay_count, crm_status, crm_response_excerpt, trace_id, kind) \
                 SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                 $10::int4[], $11::int8[], $12::bytea[], $13::bytea[], $14::int4[], $15::int4[], $16::int4[], $17::text[], $18::text[], $19::text[]) ON CONFLICT DO NOTHING",
                &[&ids, &at, &tenant, &call, &crm, &stage, &reason, &detail, &topic, &part, &offset, &key, &payload, &attempt, &replays, &status, &excerpt, &trace, &kind],
            )
            .await?
        };
        for r in rejects {
            tx.execute(
                "INSERT INTO sink_rejects (topic, part, \"offset\", payload, error) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&r.topic, &r.partition, &r.offset, &r.payload, &r.error],
            )
            .await?;
        }
        tx.commit().await?;
        Ok((a, d))
    }

    /// Drops the partitions (of `audit` and `audit_lookup`) of days wholly older than
    /// `keep`; returns their names.
    pub async fn purge(&mut self, keep: Duration, now_ms: i64) -> Result<Vec<String>, tokio_postgres::Error> {
        let oldest_kept = day_of(now_ms - keep.as_millis() as i64);
        let rows = self
            .client
            .query(
                "SELECT p.relname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = ANY($1)",
                &[&PARTITIONED.to_vec()],
            )
            .await?;
        let mut dropped = vec![];
        for r in rows {
            let (parent, name): (String, String) = (r.get(0), r.get(1));
            let Some(date) = name.strip_prefix(&format!("{parent}_p")).and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok()) else {
                continue;
            };
            let day = date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp().div_euclid(86_400)).unwrap_or(i64::MAX);
            if day < oldest_kept {
                self.client.batch_execute(&format!("DROP TABLE IF EXISTS {name}")).await?;
                self.days.remove(&day);
                dropped.push(name);
            }
        }
        Ok(dropped)
    }
}

/// One step of a call's path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub at: String,
    pub tenant_id: String,
    pub stage: String,
    pub crm: Option<String>,
    pub operation: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub detail: String,
    pub version: Option<i64>,
    pub attempt: i32,
    pub crm_status: Option<i32>,
    pub crm_record_id: Option<String>,
    pub latency_ms: Option<i64>,
    pub trace_id: String,
    /// The activity's kind (`call` for rows stored before kinds existed).
    pub kind: String,
    /// For dead letters: the entry's id and review state.
    pub dlq: Option<String>,
}

/// Dead letters waiting for review (neither replayed nor acknowledged), per CRM (`none` for
/// entries of the stages before the writers) and reason: how many, and how long the oldest
/// has waited.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenReview {
    pub crm: String,
    pub reason: String,
    pub open: i64,
    pub oldest_age_s: f64,
}

impl AuditStore {
    /// Every CRM and reason with open DLQ entries (the partial index `dlq_open` keeps this
    /// cheap however many reviewed entries are kept).
    pub async fn open_review(&self) -> Result<Vec<OpenReview>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT coalesce(crm, 'none'), reason, count(*), \
                 greatest(extract(epoch FROM now() - min(failed_at)), 0)::float8 \
                 FROM dlq WHERE state = 'open' GROUP BY 1, 2 ORDER BY 1, 2",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| OpenReview { crm: r.get(0), reason: r.get(1), open: r.get(2), oldest_age_s: r.get(3) }).collect())
    }
}

/// An activity found by `crm-sync trace --phone/--email/--agent/--since/--until`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Found {
    /// When it happened (UTC, to the second).
    pub activity_at: String,
    pub kind: String,
    pub activity_id: String,
}

impl AuditStore {
    /// `tenant`'s activities (newest first, at most `limit`) that have every one of `names`
    /// (`audit_lookup`'s keyed names) and happened in [since, until). With no names, every
    /// activity in the range. Each is an index probe: `names` by the primary key, a time
    /// range alone by `audit_lookup_time`.
    pub async fn find(
        &self,
        tenant: &str,
        names: &[String],
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<Found>, tokio_postgres::Error> {
        let select = "SELECT to_char(max(activity_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), kind, activity_id FROM audit_lookup \
                      WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR activity_at >= $2) AND ($3::timestamptz IS NULL OR activity_at < $3)";
        let rows = if names.is_empty() {
            let sql = format!("{select} GROUP BY activity_id, kind ORDER BY max(activity_at) DESC, activity_id LIMIT $4");
            self.client.query(&sql, &[&tenant, &since, &until, &limit]).await?
        } else {
            let names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
            let wanted = names.iter().collect::<HashSet<_>>().len() as i64;
            let sql = format!(
                "{select} AND name = ANY($4) GROUP BY activity_id, kind HAVING count(DISTINCT name) = $5 \
                 ORDER BY max(activity_at) DESC, activity_id LIMIT $6"
            );
            self.client.query(&sql, &[&tenant, &since, &until, &names, &wanted, &limit]).await?
        };
        Ok(rows.iter().map(|r| Found { activity_at: r.get(0), kind: r.get(1), activity_id: r.get(2) }).collect())
    }
}

impl AuditStore {
    /// The steps of `call_id` (of `tenant`, if given), oldest first, with the review state of
    /// the DLQ entries they made: what `crm-sync trace` shows.
    pub async fn trace(&self, call_id: &str, tenant: Option<&str>) -> Result<Vec<Step>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), tenant_id, stage, crm, operation, outcome, reason, detail, \
                 version, attempt, crm_status, crm_record_id, latency_ms, trace_id, coalesce(kind, 'call') \
                 FROM audit WHERE call_id = $1 AND ($2::text IS NULL OR tenant_id = $2) ORDER BY occurred_at, audit_id",
                &[&call_id, &tenant],
            )
            .await?;
        let dlq: BTreeMap<(String, String, String), String> = self
            .client
            .query(
                "SELECT tenant_id, coalesce(crm, ''), reason, dlq_id, state, replay_count, coalesce(state_note, '') FROM dlq \
                 WHERE call_id = $1 AND ($2::text IS NULL OR tenant_id = $2) ORDER BY failed_at",
                &[&call_id, &tenant],
            )
            .await?
            .iter()
            .map(|r| {
                let (id, state, replays, note): (String, String, i32, String) = (r.get(3), r.get(4), r.get(5), r.get(6));
                let note = if note.is_empty() { String::new() } else { format!(": {note}") };
                ((r.get(0), r.get(1), r.get(2)), format!("dlq entry {id}, {state}{note}, replayed {replays}×"))
            })
            .collect();
        Ok(rows
            .iter()
            .map(|r| {
                let tenant_id: String = r.get(1);
                let crm: Option<String> = r.get(3);
                let reason: Option<String> = r.get(6);
                let outcome: String = r.get(5);
                let dlq = (outcome == "DEAD_LETTERED")
                    .then(|| {
                        reason.as_ref().and_then(|why| dlq.get(&(tenant_id.clone(), crm.clone().unwrap_or_default(), why.clone()))).cloned()
                    })
                    .flatten();
                Step {
                    at: r.get(0),
                    tenant_id,
                    stage: r.get(2),
                    crm,
                    operation: r.get(4),
                    outcome,
                    reason,
                    detail: r.get(7),
                    version: r.get(8),
                    attempt: r.get(9),
                    crm_status: r.get(10),
                    crm_record_id: r.get(11),
                    latency_ms: r.get(12),
                    trace_id: r.get(13),
                    kind: r.get(14),
                    dlq,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_utc_day() {
        let ms = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(partition_name(day_of(ms)), "audit_p20260101");
        assert_eq!(partition_name(day_of(ms - 1)), "audit_p20251231");
        assert_eq!(day_date(day_of(ms) + 1).to_string(), "2026-01-02");
        assert_eq!(redact("postgres://sink:s3cret@db:5432/audit"), "postgres://sink:***@db:5432/audit");
        assert_eq!(database_url("postgres://postgres@127.0.0.1:5432/postgres", "dev_1"), "postgres://postgres@127.0.0.1:5432/dev_1");
    }
}

/// A call the audit store says was written to a CRM: its latest successful write.
#[derive(Debug, Clone)]
pub struct Written {
    pub call_id: String,
    pub idempotency_key: String,
    pub record_id: String,
    pub version: i64,
    /// Where the write request was read (crm.writes.<crm>): the reconciler re-reads it
    /// for the values to compare and the bytes to re-send.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub at_ms: i64,
    /// The contact the writer linked the record to, when it linked one (or the one the
    /// reconciler saw it moved to by a merge).
    pub linked_contact: Option<String>,
    /// The CRM user the writer last made the record's owner, when it set one.
    pub owner_id: Option<String>,
    /// The company and deal the writer associated it with, when it did.
    pub company_id: Option<String>,
    pub deal_id: Option<String>,
    /// A lead's person (`contact:<id>` or `lead:<id>`), as written, or as the reconciler
    /// last found them moved to by a merge or a conversion.
    pub person: Option<String>,
}

/// One reconciliation pass of one tenant in one CRM: the parity report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ParityReport {
    pub run_id: String,
    pub tenant_id: String,
    pub crm: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub window_from_ms: i64,
    pub checked: i32,
    pub matching: i32,
    pub drifted: i32,
    pub repaired: i32,
    pub dead_lettered: i32,
    pub deferred: i32,
    pub findings: BTreeMap<String, i64>,
    pub missing_fields: Vec<String>,
    pub error: Option<String>,
}

fn ms_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl AuditStore {
    /// The activities of `kind` that `tenant` had written to `crm` since `from_ms` and not
    /// after `until_ms`, each with its latest successful write (a later update wins; a
    /// record re-created by the reconciler replaces the one that was gone). One kind at a
    /// time: each is its own object in the CRM, and one must never be taken for another's
    /// missing record (rows from before kinds were stored are calls).
    pub async fn written(
        &self,
        tenant: &str,
        crm: &str,
        kind: crate::events::ActivityKind,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<Written>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT ON (a.call_id) a.call_id, a.idempotency_key, a.crm_record_id, a.version, a.input_topic, a.input_partition, a.input_offset, a.occurred_at, \
                 (SELECT c.attributes->>'contact_id' FROM audit c WHERE c.call_id = a.call_id AND c.tenant_id = a.tenant_id AND c.crm = a.crm \
                    AND c.attributes ? 'contact_id' AND c.outcome IN ('SUCCEEDED', 'REPAIRED') AND c.crm_record_id = a.crm_record_id \
                    AND ((c.stage = 'WRITER' AND c.operation = 'write') OR (c.stage = 'RECONCILER' AND c.operation IN ('reconcile.contact_merged', 'reconcile.late_associated'))) \
                    ORDER BY c.occurred_at DESC LIMIT 1), \
                 (SELECT o.attributes->>'owner_id' FROM audit o WHERE o.call_id = a.call_id AND o.tenant_id = a.tenant_id AND o.crm = a.crm \
                    AND o.attributes ? 'owner_id' AND o.outcome = 'SUCCEEDED' AND o.crm_record_id = a.crm_record_id \
                    AND o.stage = 'WRITER' AND o.operation = 'write' ORDER BY o.occurred_at DESC LIMIT 1), \
                 (SELECT o.attributes->>'company_id' FROM audit o WHERE o.call_id = a.call_id AND o.tenant_id = a.tenant_id AND o.crm = a.crm \
                    AND o.attributes ? 'company_id' AND o.outcome = 'SUCCEEDED' AND o.crm_record_id = a.crm_record_id \
                    AND o.stage = 'WRITER' AND o.operation = 'write' ORDER BY o.occurred_at DESC LIMIT 1), \
                 (SELECT o.attributes->>'deal_id' FROM audit o WHERE o.call_id = a.call_id AND o.tenant_id = a.tenant_id AND o.crm = a.crm \
                    AND o.attributes ? 'deal_id' AND o.outcome = 'SUCCEEDED' AND o.crm_record_id = a.crm_record_id \
                    AND o.stage = 'WRITER' AND o.operation = 'write' ORDER BY o.occurred_at DESC LIMIT 1), \
                 (SELECT p.attributes->>'person' FROM audit p WHERE p.call_id = a.call_id AND p.tenant_id = a.tenant_id AND p.crm = a.crm \
                    AND coalesce(p.kind, 'call') = $5 AND p.attributes ? 'person' AND p.occurred_at >= a.occurred_at \
                    AND ((p.stage = 'WRITER' AND p.operation = 'write' AND p.outcome = 'SUCCEEDED') \
                      OR (p.stage = 'RECONCILER' AND p.operation = 'reconcile.person_merged' AND p.outcome = 'REPAIRED')) \
                    ORDER BY p.occurred_at DESC LIMIT 1) \
                 FROM audit a WHERE a.tenant_id = $1 AND a.crm = $2 AND a.stage = 'WRITER' AND a.operation = 'write' AND a.outcome = 'SUCCEEDED' \
                   AND a.occurred_at >= $3 AND a.occurred_at <= $4 AND a.call_id IS NOT NULL AND a.crm_record_id IS NOT NULL \
                   AND coalesce(a.kind, 'call') = $5 \
                 ORDER BY a.call_id, a.occurred_at DESC, a.version DESC",
                &[&tenant, &crm, &ts(from_ms), &ts(until_ms), &kind.as_str()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Written {
                call_id: r.get(0),
                idempotency_key: r.get::<_, Option<String>>(1).unwrap_or_default(),
                record_id: r.get(2),
                version: r.get::<_, Option<i64>>(3).unwrap_or(0),
                topic: r.get(4),
                partition: r.get(5),
                offset: r.get(6),
                at_ms: ms_of(r.get(7)),
                linked_contact: r.get(8),
                owner_id: r.get(9),
                company_id: r.get(10),
                deal_id: r.get(11),
                person: r.get(12),
            })
            .collect())
    }

    /// (record id, operation) pairs the reconciler already dead-lettered for these calls, so
    /// a finding that stays (a deletion someone meant) is dead-lettered once, not per pass.
    pub async fn reconciler_dead_letters(
        &self,
        tenant: &str,
        crm: &str,
        call_ids: &[String],
    ) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT crm_record_id, operation FROM audit WHERE call_id = ANY($3) AND tenant_id = $1 AND crm = $2 \
                 AND stage = 'RECONCILER' AND outcome = 'DEAD_LETTERED' AND crm_record_id IS NOT NULL",
                &[&tenant, &crm, &call_ids],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn record_run(&self, r: &ParityReport) -> Result<(), tokio_postgres::Error> {
        let findings = serde_json::to_value(&r.findings).unwrap_or_default();
        self.client
            .execute(
                "INSERT INTO reconcile_runs (run_id, tenant_id, crm, started_at, finished_at, window_from, checked, matching, drifted, repaired, dead_lettered, deferred, findings, missing_fields, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (run_id) DO NOTHING",
                &[&r.run_id, &r.tenant_id, &r.crm, &ts(r.started_ms), &ts(r.finished_ms), &ts(r.window_from_ms), &r.checked, &r.matching, &r.drifted, &r.repaired, &r.dead_lettered, &r.deferred, &findings, &r.missing_fields, &r.error],
            )
            .await?;
        Ok(())
    }

    /// The latest pass per tenant and CRM (optionally one tenant's), for `reconcile --report`.
    pub async fn latest_runs(&self, tenant: Option<&str>) -> Result<Vec<ParityReport>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT ON (tenant_id, crm) run_id, tenant_id, crm, started_at, finished_at, window_from, checked, matching, drifted, repaired, dead_lettered, deferred, findings, missing_fields, error \
                 FROM reconcile_runs WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY tenant_id, crm, finished_at DESC",
                &[&tenant],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ParityReport {
                run_id: r.get(0),
                tenant_id: r.get(1),
                crm: r.get(2),
                started_ms: ms_of(r.get(3)),
                finished_ms: ms_of(r.get(4)),
                window_from_ms: ms_of(r.get(5)),
                checked: r.get(6),
                matching: r.get(7),
                drifted: r.get(8),
                repaired: r.get(9),
                dead_lettered: r.get(10),
                deferred: r.get(11),
                findings: serde_json::from_value(r.get::<_, serde_json::Value>(12)).unwrap_or_default(),
                missing_fields: r.get(13),
                error: r.get(14),
            })
            .collect())
    }
}
