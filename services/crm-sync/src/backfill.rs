//! `crm-sync backfill --tenant T --from TIME --to TIME [--kind call|email|meeting] [--dry-run]`:
//! after an outage, re-read a raw topic (calls.raw, emails.raw or meetings.raw) for one
//! tenant and a time range (Kafka's offsets by timestamp give each
//! partition's range) and publish those calls again, marked with the BACKFILL header. The
//! deduper lets a marked call past its mark and the writer's claim (DONE per idempotency
//! key) skips every call already written, so a range that was partly written gets only the
//! missing records, once.

use crm_common::clock::now_ms;
use crm_common::config::CommonArgs;
use crm_common::events::{ActivityKind, AuditOutcome, Stage};
use crm_common::kafka::{InMessage, OutRecord, BACKFILL};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long)]
    tenant: String,
    /// Which raw topic to re-read: `call` (calls.raw, the default), `email` (emails.raw),
    /// `meeting` (meetings.raw) or `lead` (leads.raw).
    #[arg(long, default_value = "call", value_parser = |s: &str| s.parse::<ActivityKind>())]
    kind: ActivityKind,
    /// Start of the range: RFC 3339 (`2026-11-23T08:00:00Z`) or a duration ago (`3h`).
    #[arg(long, value_parser = crate::when::ms)]
    from: i64,
    /// End of the range (exclusive), in the same forms; now when absent.
    #[arg(long, value_parser = crate::when::ms)]
    to: Option<i64>,
    /// Count what would be re-sent; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Who is running it (audited).
    #[arg(long, env = "USER", default_value = "unknown")]
    by: String,
    /// No progress bar (logs, CI).
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let to = args.to.unwrap_or_else(now_ms);
    anyhow::ensure!(args.from < to, "--from must be before --to");
    let tenants = crm_common::tenants::Tenants::load(&args.common.tenants_config)?;
    anyhow::ensure!(tenants.get(&args.tenant).is_some(), "tenant '{}' is not in TENANTS_CONFIG", args.tenant);
    let topic = args.common.topics.raw(args.kind).to_string();
    let what = format!("{}s", args.kind.as_str());
    let kafka = crm_common::kafka::Kafka::from_args(&args.common)?;
    let ranges = crm_common::kafka::reader::offsets_by_time(&kafka, &topic, args.from, to)?;
    let total: i64 = ranges.iter().map(|(_, a, b)| b - a).sum();
    let run_id = format!("backfill-{}", uuid::Uuid::new_v4().simple());
    eprintln!(
        "{} {} of {topic} between {} and {}: {total} messages to scan in {} partitions",
        if args.dry_run { "dry run:" } else { "backfill" },
        args.tenant,
        crm_common::audit_store::ts(args.from).to_rfc3339(),
        crm_common::audit_store::ts(to).to_rfc3339(),
        ranges.len()
    );
    let consumer: BaseConsumer = kafka.reader("crm-sync-backfill")?;
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total.max(0) as u64) };
    bar.set_style(indicatif::ProgressStyle::with_template("scanning {bar:40} {pos}/{len} {msg} ({eta})").expect("template"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let producer = kafka.producer()?;
    let (mut matched, mut sent) = (0u64, 0u64);
    let mut acks = vec![];
    for (p, start, end) in &ranges {
        if start >= end {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, *p, Offset::Offset(*start))?;
        consumer.assign(&tpl)?;
        let mut next = *start;
        let mut idle = Instant::now();
        while next < *end {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                anyhow::ensure!(idle.elapsed() < Duration::from_secs(30), "{topic}/{p}: no message at offset {next} for 30 s");
                continue;
            };
            let m = m?;
            idle = Instant::now();
            let at = m.offset();
            bar.inc((at + 1 - next).max(0) as u64);
            next = at + 1;
            if at >= *end {
                break;
            }
            let ts = m.timestamp().to_millis().unwrap_or(0);
            if m.key() != Some(args.tenant.as_bytes()) || ts < args.from || ts >= to {
                continue;
            }
            matched += 1;
            bar.set_message(format!("{matched} of {}", args.tenant));
            if args.dry_run {
                continue;
            }
            let input = InMessage::from_kafka(&m);
            let mut out = OutRecord::new(&topic, &args.tenant, input.payload.clone().unwrap_or_default(), &input.trace_id);
            out.headers.push((BACKFILL.to_string(), run_id.clone()));
            acks.push((topic.clone(), rt.block_on(crm_common::kafka::send(&producer, &out))?));
            sent += 1;
        }
    }
    bar.finish_and_clear();
    rt.block_on(async {
        for (t, a) in acks {
            crm_common::kafka::acknowledged(&t, a).await?;
        }
        anyhow::Ok(())
    })?;
    // One audit record for the run, so `crm-sync trace` readers can see why calls came twice.
    if !args.dry_run {
        let emit = crm_common::emit::Emitter::new(Stage::Backfill, args.common.topics.clone());
        let input = InMessage {
            topic: topic.clone(),
            partition: -1,
            offset: -1,
            key: Some(args.tenant.as_bytes().to_vec()),
            payload: None,
            timestamp_ms: Some(now_ms()),
            headers: vec![],
            trace_id: crm_common::kafka::new_trace_id(),
        };
        let subject = crm_common::emit::Subject { tenant_id: &args.tenant, call_id: None, crm: None, version: None, kind: Some(args.kind) };
        let mut a = emit.audit(
            &input,
            &subject,
            "backfill",
            AuditOutcome::Succeeded,
            format!(
                "{run_id} by {}: re-sent {sent} {what} of {} from {topic} between {} and {}",
                args.by,
                args.tenant,
                crm_common::audit_store::ts(args.from).to_rfc3339(),
                crm_common::audit_store::ts(to).to_rfc3339()
            ),
        );
        a.attributes.insert("run_id".into(), run_id.clone());
        a.attributes.insert("sent".into(), sent.to_string());
        rt.block_on(crm_common::kafka::publish_all(&producer, [&emit.audit_record(&a)]))?;
    }
    if args.dry_run {
        println!("dry run: {matched} {what} of {} in range would be re-sent ({total} messages scanned)", args.tenant);
    } else {
        println!(
            "{run_id}: re-sent {sent} {what} of {} ({total} messages scanned); already-written {what} will be audited as duplicates",
            args.tenant
        );
    }
    Ok(())
}
