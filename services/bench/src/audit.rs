//! `bench audit`: the audit store at size.
//!
//! 1. Load: `rows` audit rows (10 per call, 200 tenants, spread over 30 days of partitions)
//!    written by PostgreSQL itself (`INSERT … SELECT generate_series`), in chunks.
//! 2. Trace: `crm-sync trace`'s query for random calls against that table (goal: well under
//!    a second), and the `crm-sync trace` command end to end.
//! 3. Sink: `sink_records` AuditRecords produced to the dev broker, and the audit-sink's
//!    insert rate from its start until the last is stored.
//!
//! Runs on a database of its own, dropped at the end.

use crm_common::audit_store::{self, AuditStore};
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::*;
use crm_dev::{sibling_binary, DevBroker};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DAYS: i64 = 30;

/// The sink's records, on a day of their own (tomorrow), so progress is a count of one
/// partition rather than of the whole table.
fn record(i: usize, day_ms: i64) -> AuditRecord {
    AuditRecord {
        audit_id: format!("sink-{i}"),
        tenant_id: format!("t{}", i % 200),
        call_id: Some(format!("s{}", i / 10)),
        crm: Some(Crm::Hubspot),
        stage: Stage::Writer,
        operation: "POST /crm/v3/objects/calls/batch/create".into(),
        outcome: AuditOutcome::Succeeded,
        reason: None,
        detail: "ok".into(),
        attempt: 1,
        version: Some(1),
        idempotency_key: Some(format!("t{}:s{}:hubspot", i % 200, i / 10)),
        crm_status: Some(201),
        crm_response_excerpt: Some("{\"status\":\"COMPLETE\",\"results\":[…]}".into()),
        crm_record_id: Some(i.to_string()),
        latency_ms: Some(12),
        input_topic: "crm.writes.hubspot".into(),
        input_partition: (i % 6) as i32,
        input_offset: i as i64,
        occurred_at: day_ms + i as i64,
        trace_id: format!("{:032x}", i / 10 + 1),
        attributes: [("rate_limit".to_string(), "x-hubspot-ratelimit-remaining=180".to_string())].into(),
        kind: None,
    }
}

pub fn run(rows: usize, sink_records: usize, database_url: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let db = format!("crm_sync_bench_audit_{}", std::process::id());
    let url = rt.block_on(audit_store::create_database(database_url, &db))?;
    let result = rt.block_on(async { phases(rows, sink_records, &url).await });
    rt.block_on(audit_store::drop_database(database_url, &db))?;
    eprintln!("dropped {db}");
    result
}

async fn phases(rows: usize, sink_records: usize, url: &str) -> anyhow::Result<()> {
    // The last 30 days, inside the sink's retention.
    let base_ms = (crm_common::clock::now_ms() / 86_400_000 - DAYS) * 86_400_000;
    let mut store = AuditStore::connect(url).await?;
    store.migrate().await?;
    store.ensure_partitions((0..=DAYS).map(|d| base_ms + d * 86_400_000)).await?;

    // 1. Load.
    let chunk = 1_000_000usize;
    let started = Instant::now();
    let mut loaded = 0usize;
    while loaded < rows {
        let n = chunk.min(rows - loaded);
        store
            .client()
            .execute(
                "INSERT INTO audit (audit_id, occurred_at, tenant_id, call_id, crm, stage, operation, outcome, reason, detail, attempt, version, \
                 idempotency_key, crm_status, crm_response_excerpt, crm_record_id, latency_ms, input_topic, input_partition, input_offset, trace_id, attributes) \
                 SELECT 'b-' || i, to_timestamp(($3::bigint + (i / 10) % ($4::bigint * 86400) * 1000 + (i % 10) * 37) / 1000.0), 't' || (i % 200), 'c' || (i / 10), \
                 (ARRAY['hubspot','salesforce','zoho','pipedrive'])[1 + (i / 10) % 4], (ARRAY['NORMALISER','DEDUPER','WRITER','WRITER'])[1 + i % 4], \
                 CASE WHEN i % 4 >= 2 THEN 'POST /crm/v3/objects/calls/batch/create' ELSE 'normalise' END, \
                 CASE WHEN i % 97 = 0 THEN 'DEAD_LETTERED' ELSE 'SUCCEEDED' END, CASE WHEN i % 97 = 0 THEN 'VALIDATION' END, \
                 'normalised +14•••••••71 → +16•••••••00 (region US)', 1, 1, 't' || (i % 200) || ':c' || (i / 10) || ':hubspot', 201, NULL, (i / 10)::text, 12, \
                 'calls.raw', (i % 6)::int, i, md5((i / 10)::text), '{}'::jsonb \
                 FROM generate_series($1::bigint, $2::bigint) AS i",
                &[&(loaded as i64), &((loaded + n - 1) as i64), &base_ms, &DAYS],
            )
            .await?;
        loaded += n;
        eprintln!("  loaded {loaded} rows ({:.0} rows/s)", loaded as f64 / started.elapsed().as_secs_f64());
    }
    let load_s = started.elapsed().as_secs_f64();
    store.client().batch_execute("ANALYZE audit").await?;
    let size: String = store
        .client()
        .query_one(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid",
            &[],
        )
        .await?
        .get(0);

    // 2. Trace.
    let calls = (rows / 10).max(1);
    let mut times = vec![];
    let mut steps_seen = 0;
    for k in 0..50 {
        let call = format!("c{}", (k * 7_919_993 + 12_345) % calls);
        let t = Instant::now();
        let steps = store.trace(&call, None).await?;
        times.push(t.elapsed());
        steps_seen += steps.len();
    }
    times.sort();
    let cli = sibling_binary("crm-sync")?;
    let mut cli_times = vec![];
    for k in 0..5 {
        let call = format!("c{}", (k * 104_729 + 777) % calls);
        let t = Instant::now();
        let out = Command::new(&cli).args(["trace", &call]).env("DATABASE_URL", url).stdout(Stdio::null()).status()?;
        anyhow::ensure!(out.success(), "crm-sync trace {call} failed");
        cli_times.push(t.elapsed());
    }
    cli_times.sort();

    // 3. The sink.
    let topics = Topics::default();
    // 24 partitions: the mock broker keeps only 5 MiB per partition.
    let broker = DevBroker::start(1, 24, &topics.all())?;
    let bootstrap = broker.bootstrap_servers();
    let sink_day = base_ms + (DAYS + 1) * 86_400_000;
    let partition = audit_store::partition_name(audit_store::day_of(sink_day));
    let count = format!("SELECT count(*) FROM {partition}");
    crate::produce_all(&bootstrap, &topics.audit, sink_records, |i| {
        let r = record(i, sink_day);
        Ok((r.tenant_id.clone(), codec::encode(&r)?))
    })?;
    let mut sink = Command::new(sibling_binary("audit-sink")?)
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("DATABASE_URL", url)
        .env("TENANTS_CONFIG", "/dev/null")
        .env("PIPELINE_BATCH", "2000")
        .env("AUDIT_RETENTION", "3650d")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(300);
    let stored = loop {
        let n: i64 = match store.client().query_one(&count, &[]).await {
            Ok(r) => r.get(0),
            Err(_) => 0, // the sink has not made the day's partition yet
        };
        if n >= sink_records as i64 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sink_s = t.elapsed().as_secs_f64();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(sink.id() as i32, libc::SIGTERM) };
    let _ = sink.wait();
    drop(broker);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nbench audit: {rows} audit rows ({calls} calls × 10, 200 tenants, {DAYS} day partitions), {size} with indexes");
    println!("  load (server-side INSERT … SELECT)   {load_s:.1} s: {:.0} rows/s", rows as f64 / load_s);
    println!(
        "  trace query, 50 random calls         p50 {:.2} ms   p90 {:.2} ms   max {:.2} ms   ({} steps, 10 per call)",
        ms(times[25]),
        ms(times[45]),
        ms(times[49]),
        steps_seen
    );
    println!(
        "  crm-sync trace, 5 calls, end to end  p50 {:.0} ms   max {:.0} ms   (process start, connect, schema check, query)",
        ms(cli_times[2]),
        ms(cli_times[4])
    );
    println!(
        "  audit-sink                           {stored} records from the broker stored in {sink_s:.1} s: {:.0} records/s (batches of up to 2000, one transaction each)",
        stored as f64 / sink_s
    );
    Ok(())
}
