//! `crm-sync dlq list|show|replay|ack|purge`: reviewing the dead-letter queue (DESIGN §6)
//! from the audit store. `replay` re-publishes entries to the topic they failed on (the stage
//! that failed reads them again, through idempotency like any write), after the cause was
//! fixed; each carries its replay count in a header, so an entry that keeps failing comes
//! back with a higher count and is refused past `--max-replays`. `ack` marks entries as
//! expected, with a note. Every action is audited on `sync.audit` (stage OPERATOR), and an
//! entry's state (open, replayed, acknowledged) shows in `list`.

use crm_common::audit_store::{ts, AuditStore};
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::{AuditOutcome, AuditRecord, Crm, Stage};
use crm_common::kafka::{RECREATE, REPLAY_COUNT};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub cmd: DlqCmd,
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres", global = true)]
    pub database_url: String,
    #[command(flatten)]
    pub kafka: crm_common::config::KafkaArgs,
    /// Who is acting (recorded with every action).
    #[arg(long, env = "USER", default_value = "operator", global = true)]
    pub by: String,
}

/// Which entries: every filter given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub crm: Option<Crm>,
    /// open, replayed or acknowledged.
    #[arg(long)]
    pub state: Option<String>,
    /// Failed at or after: an RFC 3339 time, or a duration ago ("2h", "7d").
    #[arg(long)]
    pub since: Option<String>,
    /// Failed before: an RFC 3339 time, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Most entries.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCmd {
    /// Entries, newest first, with their state.
    List {
        #[command(flatten)]
        filter: Filter,
    },
    /// One entry in full, its failed message decoded.
    Show { id: String },
    /// Re-publish entries to the topic they failed on (the ids given, or every open entry the
    /// filter matches).
    Replay {
        ids: Vec<String>,
        #[command(flatten)]
        filter: Filter,
        /// Say what would be replayed, and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// Entries replayed this often already are refused (a replay loop).
        #[arg(long, default_value_t = 3)]
        max_replays: i32,
    },
    /// Mark entries as expected: nothing to replay.
    Ack {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long, required = true)]
        note: String,
    },
    /// Delete replayed and acknowledged entries that failed before `older_than` ago.
    Purge {
        #[arg(long, default_value = "180d", value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

/// A time given as RFC 3339, a date, or as a duration ago, in ms.
fn when(s: &str) -> anyhow::Result<i64> {
    crate::when::ms(s).map_err(|e| anyhow::anyhow!(e))
}

/// One entry as listed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub failed_at: String,
    pub tenant_id: String,
    pub call_id: Option<String>,
    pub crm: Option<String>,
    pub stage: String,
    pub reason: String,
    pub detail: String,
    pub state: String,
    pub replay_count: i32,
    pub source_topic: String,
    pub source_key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub crm_status: Option<i32>,
    pub crm_response_excerpt: Option<String>,
    pub state_note: Option<String>,
    pub trace_id: String,
}

const COLUMNS: &str = "dlq_id, to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), tenant_id, call_id, crm, stage, reason, detail, state, replay_count, \
                       source_topic, source_key, payload, crm_status, crm_response_excerpt, state_note, trace_id";

fn entry(r: &tokio_postgres::Row) -> Entry {
    Entry {
        id: r.get(0),
        failed_at: r.get(1),
        tenant_id: r.get(2),
        call_id: r.get(3),
        crm: r.get(4),
        stage: r.get(5),
        reason: r.get(6),
        detail: r.get(7),
        state: r.get(8),
        replay_count: r.get(9),
        source_topic: r.get(10),
        source_key: r.get(11),
        payload: r.get(12),
        crm_status: r.get(13),
        crm_response_excerpt: r.get(14),
        state_note: r.get(15),
        trace_id: r.get(16),
    }
}

pub async fn select(store: &AuditStore, f: &Filter) -> anyhow::Result<Vec<Entry>> {
    let since = f.since.as_deref().map(when).transpose()?.map(ts);
    let until = f.until.as_deref().map(when).transpose()?.map(ts);
    let crm = f.crm.map(|c| c.as_str().to_string());
    let rows = store
        .client()
        .query(
            &format!(
                "SELECT {COLUMNS} FROM dlq WHERE ($1::text IS NULL OR reason = upper($1)) AND ($2::text IS NULL OR tenant_id = $2) \
                 AND ($3::text IS NULL OR crm = $3) AND ($4::text IS NULL OR state = $4) AND ($5::timestamptz IS NULL OR failed_at >= $5) \
                 AND ($6::timestamptz IS NULL OR failed_at < $6) ORDER BY failed_at DESC LIMIT $7"
            ),
            &[&f.reason, &f.tenant, &crm, &f.state, &since, &until, &f.limit],
        )
        .await?;
    Ok(rows.iter().map(entry).collect())
}

pub async fn by_ids(store: &AuditStore, ids: &[String]) -> anyhow::Result<Vec<Entry>> {
    let rows = store.client().query(&format!("SELECT {COLUMNS} FROM dlq WHERE dlq_id = ANY($1) ORDER BY failed_at"), &[&ids]).await?;
    let found: Vec<Entry> = rows.iter().map(entry).collect();
    for id in ids {
        anyhow::ensure!(found.iter().any(|e| &e.id == id), "no DLQ entry {id}");
    }
    Ok(found)
}

fn list_text(entries: &[Entry]) -> String {
    let mut out = format!(
        "{:<36}  {:<19}  {:<10} {:<14} {:<10} {:<22} {:<12} {:>3}  detail\n",
        "id", "failed at (UTC)", "tenant", "call", "crm", "reason", "state", "rep"
    );
    for e in entries {
        let detail: String = crm_common::phone::mask_in_text(&e.detail).chars().take(90).collect();
        out += &format!(
            "{:<36}  {:<19}  {:<10} {:<14} {:<10} {:<22} {:<12} {:>3}  {detail}\n",
            e.id,
            e.failed_at,
            e.tenant_id,
            e.call_id.as_deref().unwrap_or("—"),
            e.crm.as_deref().unwrap_or("—"),
            e.reason,
            e.state,
            e.replay_count
        );
    }
    out += &format!("({} entries)\n", entries.len());
    out
}

/// The failed message, decoded for reading (numbers masked): by the record its source
/// topic carries, a write topic's either request record.
fn decoded(e: &Entry, topics: &Topics) -> String {
    use crm_common::events::ActivityKind::{Call, Email, Lead, Meeting, Unknown};
    use crm_common::events::{
        CallEvent, EmailEvent, LeadEvent, MeetingEvent, NormalisedCall, NormalisedEmail, NormalisedLead, NormalisedMeeting,
    };
    fn pretty<T: crm_common::events::AvroRecord>(payload: &[u8]) -> Result<String, String> {
        codec::decode::<T>(payload).map(|v| serde_json::to_string_pretty(&v).unwrap_or_default()).map_err(|e| e.to_string())
    }
    let t = e.source_topic.as_str();
    let json = match (topics.raw_kind(t), topics.normalised_kind(t)) {
        (Some(Call | Unknown), _) => pretty::<CallEvent>(&e.payload),
        (Some(Email), _) => pretty::<EmailEvent>(&e.payload),
        (Some(Meeting), _) => pretty::<MeetingEvent>(&e.payload),
        (Some(Lead), _) => pretty::<LeadEvent>(&e.payload),
        (_, Some(Call | Unknown)) => pretty::<NormalisedCall>(&e.payload),
        (_, Some(Email)) => pretty::<NormalisedEmail>(&e.payload),
        (_, Some(Meeting)) => pretty::<NormalisedMeeting>(&e.payload),
        (_, Some(Lead)) => pretty::<NormalisedLead>(&e.payload),
        (None, None) => crm_common::events::decode_write(&e.payload).map(|w| match w {
            crm_common::events::WritePayload::Call(c) => serde_json::to_string_pretty(&c).unwrap_or_default(),
            crm_common::events::WritePayload::Activity(a) => serde_json::to_string_pretty(&a).unwrap_or_default(),
        }),
    };
    match json {
        Ok(j) => crm_common::phone::mask_in_text(&j),
        Err(err) => format!("({} bytes that do not decode: {err})", e.payload.len()),
    }
}

/// An operator's action, for `sync.audit`.
fn audit(by: &str, e: &Entry, operation: &str, detail: String) -> AuditRecord {
    AuditRecord {
        audit_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: e.tenant_id.clone(),
        call_id: e.call_id.clone(),
        crm: e.crm.as_deref().and_then(|c| c.parse().ok()),
        stage: Stage::Operator,
        operation: operation.into(),
        outcome: AuditOutcome::Succeeded,
        reason: Some(e.reason.clone()),
        detail,
        attempt: 1,
        version: None,
        idempotency_key: None,
        crm_status: None,
        crm_response_excerpt: None,
        crm_record_id: None,
        latency_ms: None,
        input_topic: "sync.dlq".into(),
        input_partition: 0,
        input_offset: 0,
        occurred_at: crm_common::clock::now_ms(),
        trace_id: e.trace_id.clone(),
        attributes: HashMap::from([("dlq_id".to_string(), e.id.clone()), ("by".to_string(), by.to_string())]),
        kind: None,
    }
}

async fn publish_audit(producer: &FutureProducer, topics: &Topics, records: &[AuditRecord]) -> anyhow::Result<()> {
    for a in records {
        let payload = codec::encode(a)?;
        producer
            .send(FutureRecord::to(&topics.audit).key(&a.tenant_id).payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("audit of the action not accepted by the broker: {e}"))?;
    }
    Ok(())
}

/// An operator's tool gives up on an unreachable broker in 15 s, not a service's 5 min.
fn producer(kafka: &crm_common::kafka::Kafka) -> anyhow::Result<FutureProducer> {
    kafka.producer_with(&[("message.timeout.ms", "15000")])
}

pub fn run(args: DlqArgs) -> anyhow::Result<()> {
    let topics = Topics::default();
    let kafka = crm_common::kafka::Kafka::from_kafka_args(&args.kafka)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut store = AuditStore::connect(&args.database_url).await?;
        store.migrate().await?;
        match args.cmd {
            DlqCmd::List { filter } => print!("{}", list_text(&select(&store, &filter).await?)),
            DlqCmd::Show { id } => {
                let e = by_ids(&store, std::slice::from_ref(&id)).await?.remove(0);
                println!("DLQ entry {}  ({}, replayed {}×{})", e.id, e.state, e.replay_count, e.state_note.as_deref().map(|n| format!(", note: {n}")).unwrap_or_default());
                println!("  failed at   {} UTC, stage {}, {} on {}", e.failed_at, e.stage, e.reason, e.source_topic);
                println!("  tenant      {}  call {}  crm {}", e.tenant_id, e.call_id.as_deref().unwrap_or("—"), e.crm.as_deref().unwrap_or("—"));
                println!("  detail      {}", crm_common::phone::mask_in_text(&e.detail));
                if let Some(s) = e.crm_status {
                    println!("  CRM answer  {s}: {}", crm_common::phone::mask_in_text(e.crm_response_excerpt.as_deref().unwrap_or("")));
                }
                println!("  trace       {}  (crm-sync trace {})", e.trace_id, e.call_id.as_deref().unwrap_or("<call>"));
                println!("  message\n{}", decoded(&e, &topics));
            }
            DlqCmd::Replay { ids, filter, dry_run, max_replays } => {
                let entries = if ids.is_empty() {
                    let f = Filter { state: Some(filter.state.clone().unwrap_or_else(|| "open".into())), ..filter };
                    select(&store, &f).await?
                } else {
                    by_ids(&store, &ids).await?
                };
                let (ok, looping): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.replay_count < max_replays);
                for e in &looping {
                    eprintln!("refused {}: replayed {} times already (--max-replays {max_replays}); look at it with `crm-sync dlq show {}`", e.id, e.replay_count, e.id);
                }
                if dry_run {
                    println!("would replay {} entries (dry run; nothing sent):", ok.len());
                    print!("{}", list_text(&ok));
                    return Ok(());
                }
                let producer = producer(&kafka)?;
                let bar = indicatif::ProgressBar::new(ok.len() as u64);
                bar.set_style(indicatif::ProgressStyle::with_template("replaying {bar:40} {pos}/{len} {msg}").expect("template"));
                let mut done = 0;
                for e in &ok {
                    let count = (e.replay_count + 1).to_string();
                    // A record the reconciler found deleted in the CRM: replaying the entry
                    // asks the writer to create it again (while its claim names that record).
                    let gone = if e.stage == Stage::Reconciler.as_str() { deleted_record(&store, e).await? } else { None };
                    let mut headers = OwnedHeaders::new().insert(Header { key: REPLAY_COUNT, value: Some(count.as_bytes()) });
                    if let Some(id) = &gone {
                        headers = headers.insert(Header { key: RECREATE, value: Some(id.as_bytes()) });
                    }
                    let mut rec = FutureRecord::to(&e.source_topic).payload(&e.payload).headers(headers);
                    if let Some(k) = &e.source_key {
                        rec = rec.key(k);
                    }
                    producer.send(rec, Duration::from_secs(15)).await.map_err(|(err, _)| anyhow::anyhow!("replay of {} not accepted by the broker: {err}", e.id))?;
                    store
                        .client()
                        .execute(
                            "UPDATE dlq SET state = 'replayed', replay_count = replay_count + 1, state_at = now(), state_by = $2, state_note = NULL WHERE dlq_id = $1",
                            &[&e.id, &args.by],
                        )
                        .await?;
                    publish_audit(&producer, &topics, &[audit(&args.by, e, "dlq replay", format!("replayed {} to {} (replay {count}) by {}", e.id, e.source_topic, args.by))]).await?;
                    done += 1;
                    bar.inc(1);
                }
                bar.finish_with_message("done");
                println!("replayed {done} entries; {} refused as replay loops", looping.len());
            }
            DlqCmd::Ack { ids, note } => {
                let entries = by_ids(&store, &ids).await?;
                store
                    .client()
                    .execute("UPDATE dlq SET state = 'acknowledged', state_at = now(), state_by = $2, state_note = $3 WHERE dlq_id = ANY($1)", &[&ids, &args.by, &note])
                    .await?;
                let producer = producer(&kafka)?;
                let records: Vec<AuditRecord> = entries.iter().map(|e| audit(&args.by, e, "dlq ack", format!("acknowledged {} by {}: {note}", e.id, args.by))).collect();
                publish_audit(&producer, &topics, &records).await?;
                println!("acknowledged {} entries", entries.len());
            }
            DlqCmd::Purge { older_than } => {
                let before = ts(crm_common::clock::now_ms() - older_than.as_millis() as i64);
                let n = store.client().execute("DELETE FROM dlq WHERE state <> 'open' AND failed_at < $1", &[&before]).await?;
                println!("purged {n} replayed or acknowledged entries that failed before {before}");
            }
        }
        Ok(())
    })
}

/// The record a reconciler's dead letter says was deleted in the CRM, if that is what it
/// says (other findings of the reconciler replay as plain writes).
async fn deleted_record(store: &AuditStore, e: &Entry) -> anyhow::Result<Option<String>> {
    let row = store
        .client()
        .query_opt(
            "SELECT crm_record_id FROM audit WHERE call_id = $1 AND tenant_id = $2 AND crm = $3 AND stage = 'RECONCILER' \
             AND operation IN ('reconcile.deleted', 'reconcile.person_deleted') AND outcome = 'DEAD_LETTERED' ORDER BY occurred_at DESC LIMIT 1",
            &[&e.call_id, &e.tenant_id, &e.crm],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::events::fixtures;

    fn entry(topic: &str, payload: Vec<u8>) -> Entry {
        Entry {
            id: "d1".into(),
            failed_at: "2026-12-04 08:00:00".into(),
            tenant_id: "acme".into(),
            call_id: None,
            crm: None,
            stage: "WRITER".into(),
            reason: "VALIDATION".into(),
            detail: "d".into(),
            state: "open".into(),
            replay_count: 0,
            source_topic: topic.into(),
            source_key: Some(b"acme".to_vec()),
            payload,
            crm_status: None,
            crm_response_excerpt: None,
            state_note: None,
            trace_id: "t".into(),
        }
    }

    /// `dlq show` decodes the failed message by its topic's record: an email's or a lead's
    /// write request on a CRM's topic too (it printed "bytes that do not decode" for them,
    /// trying a call's request only), and a lead on leads.raw.
    #[test]
    fn every_kind_of_failed_message_is_shown_decoded_with_numbers_masked() {
        let topics = Topics::default();
        let shown = |topic: &str, payload: Vec<u8>| decoded(&entry(topic, payload), &topics);
        let email = shown("crm.writes.zoho", codec::encode(&fixtures::email_request("acme", "m1", Crm::Zoho)).unwrap());
        assert!(email.contains("\"message_id\": \"m1@mail.acme.example\""), "{email}");
        let lead = shown("leads.raw", codec::encode(&fixtures::raw_lead("acme", "l1", 0)).unwrap());
        assert!(lead.contains("\"lead_id\": \"l1\"") && lead.contains("\"utm_campaign\": \"spring-demo\""), "{lead}");
        let request = shown("crm.writes.hubspot", codec::encode(&fixtures::lead_request("acme", "l1", Crm::Hubspot)).unwrap());
        assert!(request.contains("\"kind\": \"LEAD\"") && !request.contains("4155552671"), "masked: {request}");
        let call = shown("calls.normalised", codec::encode(&fixtures::normalised_call("acme", "c1", 1)).unwrap());
        assert!(call.contains("\"call_id\": \"c1\""), "{call}");
        assert!(shown("crm.writes.hubspot", vec![1, 2, 3]).starts_with("(3 bytes that do not decode"));
    }
}
