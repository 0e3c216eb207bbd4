//! `bench deduper`: a backlog of normalised calls (some of them repeats) on calls.normalised,
//! then the passthroughs (one output per input, and two) and the real deduper over it, one after the other, each in its own
//! process and consumer group, against the machine's Redis under a key prefix of this run's
//! own (deleted afterwards). Each tenant connects one CRM, so the deduper writes one audit
//! record per input and one write request per new call: its rate is read from sync.audit.

use crate::{bench_call, measure, passthroughs, print_runs, produce_all, PASSTHROUGH_OUT, PASSTHROUGH_TWICE};
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::dedup::{DedupStore, MarkRequest};
use crm_common::events::NormalisedCall;
use crm_common::redis_conn::{self, redact_url};
use crm_dev::{sibling_binary, DevBroker};
use std::process::{Command, Stdio};

pub fn run(messages: usize, partitions: i32, tenants: usize, repeat_pct: usize, redis_url: &str) -> anyhow::Result<()> {
    let topics = Topics::default();
    let mut all = topics.all();
    all.extend([PASSTHROUGH_OUT, PASSTHROUGH_TWICE[0], PASSTHROUGH_TWICE[1]].map(String::from));
    // Audit records are the largest output (~500 bytes); keep every partition well inside
    // the dev broker's 5 MiB retention even when tenants hash unevenly.
    anyhow::ensure!(
        (messages as f64 * 500.0 * 1.5 / partitions as f64) < 4.5 * 1024.0 * 1024.0,
        "{messages} messages over {partitions} partitions overflow the dev broker's 5 MiB per partition; use more --partitions"
    );
    let broker = DevBroker::start(1, partitions, &all)?;
    let bootstrap = broker.bootstrap_servers();

    let dir = std::env::temp_dir().join(format!("crm-sync-bench-dedup-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tenants_file = dir.join("tenants.toml");
    let cfg: String = (0..tenants)
        .map(|t| format!("[tenants.t{t}]\ndefault_region = \"US\"\n[tenants.t{t}.crms.hubspot]\nplan = \"professional\"\ncredentials_secret = \"T{t}_HUBSPOT\"\n"))
        .collect();
    std::fs::write(&tenants_file, cfg)?;

    // Every `100 / repeat_pct`-th input repeats the call of the input 1,001 places earlier,
    // which is never itself a repeat slot (hence at most 50%).
    anyhow::ensure!(repeat_pct <= 50, "--repeat-pct is at most 50");
    let every = 100usize.checked_div(repeat_pct).unwrap_or(usize::MAX);
    let is_repeat = |i: usize| i % every == every - 1 && i >= 1001;
    let repeats = (0..messages).filter(|&i| is_repeat(i)).count();
    eprintln!(
        "producing {messages} normalised calls ({repeats} repeats) over {tenants} tenants to {} ({partitions} partitions)…",
        topics.calls_normalised
    );
    produce_all(&bootstrap, &topics.calls_normalised, messages, |i| {
        let n = if is_repeat(i) { i - 1001 } else { i };
        let ev = bench_call(n, tenants);
        let call = NormalisedCall {
            tenant_id: ev.tenant_id.clone(),
            call_id: ev.call_id,
            source: ev.source,
            version: 1,
            direction: ev.direction,
            from_e164: "+14155552671".into(),
            to_e164: format!("+1650253{:04}", n % 10_000),
            customer_e164: format!("+1650253{:04}", n % 10_000),
            from_raw: ev.from_number,
            to_raw: ev.to_number,
            region_used: "US".into(),
            started_at: ev.started_at,
            ended_at: ev.ended_at,
            duration_s: ev.duration_s,
            outcome: ev.outcome,
            agent_id: ev.agent_id,
            agent_email: ev.agent_email,
            recording_url: ev.recording_url,
            notes: ev.notes,
            attributes: ev.attributes,
            normalised_at: ev.started_at + 5,
        };
        Ok((ev.tenant_id, codec::encode(&call)?))
    })?;

    let prefix = format!("crm-sync-bench-{}", std::process::id());
    let env = |cmd: &mut Command| {
        cmd.env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("TENANTS_CONFIG", &tenants_file)
            .env("REDIS_URL", redis_url)
            .env("REDIS_KEY_PREFIX", &prefix)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
    };
    let mut runs = passthroughs(&topics.calls_normalised, env, &bootstrap, messages)?;
    let mut dd = Command::new(sibling_binary("deduper")?);
    env(&mut dd);
    runs.push(measure("deduper", dd.spawn()?, &bootstrap, &[&topics.audit], messages)?);

    // What the deduper wrote, to show the repeats were suppressed.
    let written = crm_common::kafka::reader::TopicReader::new(
        &crm_common::kafka::Kafka::local(&bootstrap),
        &[&topics.crm_writes(crm_common::events::Crm::Hubspot)],
    )?
    .high_watermarks(&topics.crm_writes(crm_common::events::Crm::Hubspot))?;
    print_runs(
        &format!(
            "bench deduper: {messages} inputs ({repeats} repeats), {partitions} partitions, {tenants} tenants × 1 CRM, \
             one dev broker, Redis {}",
            redact_url(redis_url)
        ),
        &runs,
    );
    println!("write requests on crm.writes.hubspot: {written} (expected {})", messages - repeats);
    println!(
        "(per input the deduper makes one Redis mark, pipelined per batch, and writes an audit record \
              plus a write request unless it is a repeat; the passthrough copies one message, or two)"
    );

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let conn = rt.block_on(redis_conn::connect_node(redis_url))?;
    let removed = rt.block_on(redis_conn::delete_prefix(&conn, &prefix))?;
    let store = rt.block_on(async { DedupStore::lazy(&crm_common::redis_conn::RedisTarget::Node(redis_url.to_string()), &prefix) })?;
    // The Redis share of the deduper's cost: the same number of marks, in the same batch
    // size, with nothing else going on.
    let (marks, batch) = (messages, 500);
    let started = std::time::Instant::now();
    rt.block_on(async {
        for chunk in (0..marks).collect::<Vec<_>>().chunks(batch) {
            let reqs: Vec<MarkRequest> = chunk
                .iter()
                .map(|&i| MarkRequest {
                    tenant_id: format!("t{}", i % tenants),
                    call_id: format!("call-{i}"),
                    version: 1,
                    input: format!("calls.normalised/{}/{i}", i % partitions as usize),
                    window_ms: 86_400_000,
                })
                .collect();
            store.mark_many(&reqs).await?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "Redis marks alone: {:.0} marks/s ({batch} per pipelined round trip, {:.2} ms per batch)",
        marks as f64 / secs,
        secs * 1000.0 / (marks / batch) as f64
    );
    rt.block_on(redis_conn::delete_prefix(&conn, &prefix))?;
    eprintln!("removed {removed} Redis keys ({prefix}:*)");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
