//! `bench audit`: the audit store at size.
//!
//! 1. Load: `rows` audit rows (10 per call, 200 tenants, spread over 30 days of partitions)
//!    written by PostgreSQL itself (`INSERT … SELECT generate_series`), in chunks.
//! 2. Trace: `crm-sync trace`'s query for random calls against that table (goal: well under
//!    a second), and the `crm-sync trace` command end to end.
//! 3. Find: `crm-sync trace --phone/--agent/--since` on `audit_lookup` loaded beside it (a
//!    customer number and an agent per call: 300,000 customers, 50 agents per tenant), the
//!    query by number, by agent and by a day of one tenant, and the command end to end.
//! 4. Sink: `sink_records` AuditRecords produced to the dev broker, and the audit-sink's
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
    // The lookups: per call, its customer's number (`phone(c)`) and its agent (`agent(c)`),
    // named by stand-ins for keyed hashes (32 hex digits) so the bench can name them too.
    let started = Instant::now();
    let mut named = 0usize;
    while named < rows / 10 {
        let n = (chunk / 2).min(rows / 10 - named);
        store
            .client()
            .execute(
                "INSERT INTO audit_lookup (name, tenant_id, activity_at, activity_id, kind, occurred_at) \
                 SELECT lpad(to_hex(CASE WHEN k = 0 THEN 1000000 + c % 300000 ELSE 10000000 + (c % 200) * 50 + (c / 200) % 50 END), 32, '0'), \
                 't' || (c % 200), at, 'c' || c, 'call', at \
                 FROM generate_series($1::bigint, $2::bigint) AS c CROSS JOIN generate_series(0, 1) AS k, \
                 LATERAL (SELECT to_timestamp(($3::bigint + c % ($4::bigint * 86400) * 1000) / 1000.0) AS at) t",
                &[&(named as i64), &((named + n - 1) as i64), &base_ms, &DAYS],
            )
            .await?;
        named += n;
    }
    let lookup_s = started.elapsed().as_secs_f64();
    let lookup_rows = named * 2;
    store.client().batch_execute("ANALYZE audit; ANALYZE audit_lookup").await?;
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

    // 3. Find.
    let name = |n: u64| format!("{n:032x}");
    let calls = calls as u64;
    let mut by_phone = vec![];
    let mut by_agent = vec![];
    let mut by_day = vec![];
    let mut found = [0usize; 3];
    for k in 0..50u64 {
        let c = (k * 7_919_993 + 12_345) % calls;
        let tenant = format!("t{}", c % 200);
        let t = Instant::now();
        found[0] += store.find(&tenant, &[name(1_000_000 + c % 300_000)], None, None, 20).await?.len();
        by_phone.push(t.elapsed());
        let t = Instant::now();
        found[1] += store.find(&tenant, &[name(10_000_000 + (c % 200) * 50 + (c / 200) % 50)], None, None, 20).await?.len();
        by_agent.push(t.elapsed());
        let day = base_ms + ((k % 10) as i64) * 86_400_000;
        let t = Instant::now();
        found[2] += store.find(&tenant, &[], Some(audit_store::ts(day)), Some(audit_store::ts(day + 86_400_000)), 20).await?.len();
        by_day.push(t.elapsed());
    }
    for v in [&mut by_phone, &mut by_agent, &mut by_day] {
        v.sort();
    }
    // End to end: one call named as the normaliser names it, found by its number (call c7's
    // first audit row is tenant t70's: the loaded rows spread a call's rows over tenants).
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let lookups = crm_common::lookups::Lookups::new(b"0123456789abcdef0123456789abcdef");
    let real = lookups.name("t70", crm_common::lookups::Lookup::Phone("+14155550107"));
    store
        .client()
        .execute(
            "INSERT INTO audit_lookup (name, tenant_id, activity_at, activity_id, kind, occurred_at) VALUES ($1, 't70', $2, 'c7', 'call', $2)",
            &[&real, &audit_store::ts(base_ms + 7_000)],
        )
        .await?;
    let mut find_cli = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let out = Command::new(&cli)
            .args(["trace", "--tenant", "t70", "--phone", "+1 415 555 0107"])
            .env("DATABASE_URL", url)
            .env("CRM_SYNC_TOKEN_KEY", KEY)
            .output()?;
        anyhow::ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Call c7"),
            "crm-sync trace --phone failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        find_cli.push(t.elapsed());
    }
    find_cli.sort();

    // 4. The sink.
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
    println!("  lookups: {lookup_rows} audit_lookup rows (a number and an agent per call) loaded in {lookup_s:.1} s");
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
    let p = |v: &[Duration]| format!("p50 {:.2} ms   p90 {:.2} ms   max {:.2} ms", ms(v[25]), ms(v[45]), ms(v[49]));
    println!("  find by number, 50 random            {}   ({} activities, 20 at most each)", p(&by_phone), found[0]);
    println!("  find by agent, 50 random             {}   ({} activities; ~100 per agent, newest 20)", p(&by_agent), found[1]);
    println!("  find by a day of one tenant, 50      {}   ({} activities; newest 20 of ~430)", p(&by_day), found[2]);
    println!(
        "  crm-sync trace --phone, end to end   p50 {:.0} ms   max {:.0} ms   (process start, connect, schema check, find, trace)",
        ms(find_cli[2]),
        ms(find_cli[4])
    );
    println!(
        "  audit-sink                           {stored} records from the broker stored in {sink_s:.1} s: {:.0} records/s (batches of up to 2000, one transaction each)",
        stored as f64 / sink_s
    );
    Ok(())
}
