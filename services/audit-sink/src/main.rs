//! audit-sink: `sync.audit` and `sync.dlq` → PostgreSQL (DESIGN §8), for `crm-sync trace` and
//! `crm-sync dlq`. Each batch is one database transaction; the consume loop commits the
//! batch's offsets only after it, so a crash redelivers at most what was not stored, and a
//! redelivered record is stored once (primary keys, `ON CONFLICT DO NOTHING`). A message that
//! is not an AuditRecord or DeadLetter is kept in `sink_rejects` with the error, not dropped.
//! When PostgreSQL is away the batch is retried with backoff and nothing is committed.

use clap::Parser;
use crm_common::audit_store::{redact, AuditStore, OpenReview, Reject};
use crm_common::codec;
use crm_common::config::{CommonArgs, PipelineArgs};
use crm_common::events::{AuditRecord, DeadLetter};
use crm_common::kafka::InMessage;
use crm_common::pipeline::{self, Handler, PipelineConfig, Processed, Transient};
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(name = "audit-sink", about = "sync.audit and sync.dlq → PostgreSQL (DATABASE_URL), idempotently")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Audit rows are kept this long; whole days older than that are dropped (DLQ entries
    /// are kept until purged with `crm-sync dlq purge`).
    #[arg(long, env = "AUDIT_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// How often old days are dropped.
    #[arg(long, env = "AUDIT_PURGE_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    purge_interval: Duration,
    /// How often the DLQ's review queue is read for the `crm_sync.dlq.open` gauges.
    #[arg(long, env = "DLQ_REVIEW_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    dlq_review_interval: Duration,
}

struct Sink {
    url: String,
    store: Mutex<Option<AuditStore>>,
    audit_topic: String,
}

enum Row {
    Audit(Box<AuditRecord>),
    Dead(Box<DeadLetter>),
    Rejected(Reject),
}

impl Sink {
    fn decode(&self, m: &InMessage) -> Row {
        let bytes = m.payload.as_deref().unwrap_or_default();
        let reject = |error: String| {
            Row::Rejected(Reject { topic: m.topic.clone(), partition: m.partition, offset: m.offset, payload: m.payload.clone(), error })
        };
        if m.topic == self.audit_topic {
            match codec::decode::<AuditRecord>(bytes) {
                Ok(a) => Row::Audit(Box::new(a)),
                Err(e) => reject(format!("not an AuditRecord: {e}")),
            }
        } else {
            match codec::decode::<DeadLetter>(bytes) {
                Ok(d) => Row::Dead(Box::new(d)),
                Err(e) => reject(format!("not a DeadLetter: {e}")),
            }
        }
    }
}

impl Handler for Sink {
    async fn handle(&self, batch: &[InMessage]) -> Result<Vec<Processed>, Transient> {
        let (mut audit, mut dlq, mut rejects) = (vec![], vec![], vec![]);
        let mut outcomes = Vec::with_capacity(batch.len());
        for m in batch {
            match self.decode(m) {
                Row::Audit(a) => {
                    audit.push(*a);
                    outcomes.push("audit");
                }
                Row::Dead(d) => {
                    dlq.push(*d);
                    outcomes.push("dlq");
                }
                Row::Rejected(r) => {
                    tracing::error!(topic = r.topic, partition = r.partition, offset = r.offset, error = r.error, "kept in sink_rejects");
                    rejects.push(r);
                    outcomes.push("rejected");
                }
            }
        }
        let mut guard = self.store.lock().await;
        if guard.as_ref().is_none_or(|s| s.is_closed()) {
            *guard = Some(AuditStore::connect(&self.url).await.map_err(|e| Transient(e.to_string()))?);
        }
        let store = guard.as_mut().expect("connected");
        let (a, d) = store
            .insert(&audit, &dlq, &rejects)
            .await
            .map_err(|e| Transient(format!("PostgreSQL at {} failed storing {} records: {e}", redact(&self.url), batch.len())))?;
        tracing::debug!(audit = a, dlq = d, redelivered = audit.len() as u64 + dlq.len() as u64 - a - d, "stored");
        Ok(outcomes.into_iter().map(|outcome| Processed { outputs: vec![], outcome }).collect())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = crm_common::telemetry::init("audit-sink", &cli.common)?;
    let url = cli.common.database_url.clone();
    let mut store = AuditStore::connect(&url).await?;
    let applied = store.migrate().await?;
    tracing::info!(database = redact(&url), ?applied, retention = %humantime::format_duration(cli.retention), "audit store ready");
    let sink = Sink { url: url.clone(), store: Mutex::new(Some(store)), audit_topic: cli.common.topics.audit.clone() };

    // Retention: drop whole days past it, on its own connection.
    let (retention, every) = (cli.retention, cli.purge_interval);
    tokio::spawn(async move {
        loop {
            match AuditStore::connect(&url).await {
                Ok(mut s) => match s.purge(retention, crm_common::clock::now_ms()).await {
                    Ok(dropped) if !dropped.is_empty() => tracing::info!(?dropped, "dropped audit days past retention"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purge failed; trying again later"),
                },
                Err(e) => tracing::warn!(error = %e, "purge could not connect; trying again later"),
            }
            tokio::time::sleep(every).await;
        }
    });

    // The DLQ's review queue as gauges (`crm_sync.dlq.open`, `…oldest_age`), read from the
    // store on its own connection: every replica reports the same numbers (alerts take max).
    let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    crm_common::telemetry::dlq_review_metrics(open.clone());
    tokio::spawn(watch_review_queue(cli.common.database_url.clone(), cli.dlq_review_interval, open));

    let cfg = PipelineConfig {
        service: "audit-sink",
        input_topics: vec![cli.common.topics.audit.clone(), cli.common.topics.dlq.clone()],
        common: cli.common,
        args: cli.pipeline,
    };
    pipeline::run(cfg, sink, crm_common::shutdown::service()).await
}

/// Reads the DLQ's open entries per CRM and reason every `every` into `open` (what the gauges
/// report). A failed read keeps the last figures and says why; the next read tries again.
async fn watch_review_queue(url: String, every: Duration, open: std::sync::Arc<std::sync::Mutex<Vec<OpenReview>>>) {
    let mut store: Option<AuditStore> = None;
    loop {
        if store.as_ref().is_none_or(AuditStore::is_closed) {
            store = match AuditStore::connect(&url).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "the DLQ review gauges could not connect; trying again later");
                    None
                }
            };
        }
        if let Some(s) = &store {
            match s.open_review().await {
                Ok(fresh) => {
                    let mut g = open.lock().unwrap_or_else(|e| e.into_inner());
                    *g = crm_common::telemetry::with_reviewed_at_zero(&g, fresh);
                }
                Err(e) => tracing::warn!(error = %e, "could not read the DLQ's open entries; the gauges keep the last figures"),
            }
        }
        tokio::time::sleep(every).await;
    }
}
