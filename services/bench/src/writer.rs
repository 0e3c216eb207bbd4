//! `bench writer`: the HubSpot writer against crm-sim, in two phases.
//!
//! 1. Backlog: `records` write requests queued for `tenants` tenants, each with its own
//!    HubSpot portal limited to `burst` requests per 10 s (crm-sim and TENANTS_CONFIG agree).
//!    Prints records/s, API calls, records per call, 429s, and budget utilisation: calls made
//!    against what the rolling windows the run spanned allowed.
//! 2. Latency under budget: the whole pipeline (normaliser, deduper, writer) with calls
//!    produced to calls.raw at `rate` per second, well inside the limits; p50/p99 from the
//!    produce time on calls.raw to the writer's DONE (its final audit record).

use crate::produce_all;
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::dev_broker::{sibling_binary, spawn_crm_sim, DevBroker};
use crm_common::events::*;
use crm_common::topic_reader::TopicReader;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Sim {
    url: String,
    http: reqwest::blocking::Client,
}

impl Sim {
    fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut r = self.http.request(method, format!("{}/admin{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send()?;
        anyhow::ensure!(resp.status().is_success(), "crm-sim admin {path}: {}", resp.status());
        Ok(resp.json().unwrap_or(Value::Null))
    }

    fn account(&self, name: &str, burst: Option<u64>) -> anyhow::Result<()> {
        let mut spec = json!({
            "crm": "hubspot", "account": name, "plan": "professional",
            "tokens": [{"token": format!("tok-{name}"), "kind": "static"}],
            "fields": {"calls": {"crm_sync_key": {"type": "text", "unique": true}}},
            "key_field": {"object": "calls", "field": "crm_sync_key"},
            "objects": {"contacts": [{"firstname": "Ada", "phone": "(415) 555-2671"}]},
        });
        if let Some(b) = burst {
            spec["limits"] = json!({"burst_per_10s": b});
        }
        self.admin(reqwest::Method::POST, "/accounts", Some(spec)).map(|_| ())
    }

    /// (live calls, counters) of one account.
    fn state(&self, name: &str) -> anyhow::Result<(u64, Value)> {
        let s = self.admin(reqwest::Method::GET, &format!("/accounts/hubspot/{name}"), None)?;
        Ok((s["objects"]["calls"]["live"].as_u64().unwrap_or(0), s["counters"].clone()))
    }
}

fn count(counters: &Value, endpoint_part: &str, status: &str) -> u64 {
    counters
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.contains(endpoint_part)).map(|(_, v)| v[status].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn all_429(counters: &Value) -> u64 {
    counters.as_object().map(|m| m.values().map(|v| v["429"].as_u64().unwrap_or(0)).sum()).unwrap_or(0)
}

fn request(tenant: &str, i: usize) -> CrmWriteRequest {
    let call = format!("b{i}");
    let mut c = fixtures::normalised_call(tenant, &call, 2);
    c.customer_e164 = "+14155552671".into();
    CrmWriteRequest {
        tenant_id: tenant.into(),
        call_id: call.clone(),
        crm: Crm::Hubspot,
        idempotency_key: idempotency_key(tenant, &call, Crm::Hubspot),
        version: 2,
        call: c,
        requested_at: 0,
        trace_id: format!("{:032x}", i + 1),
    }
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

pub fn run(records: usize, tenants: usize, burst: u64, rate: usize, seconds: usize, fetch_wait_ms: u64, redis_url: &str) -> anyhow::Result<()> {
    let topics = Topics::default();
    let broker = DevBroker::start(1, 6, &topics.all())?;
    let bootstrap = broker.bootstrap_servers();
    let (url, sim_child) = spawn_crm_sim(&sibling_binary("crm-sim")?, None, true)?;
    let mut children = Killed(vec![sim_child]);
    let sim = Sim { url: url.clone(), http: reqwest::blocking::Client::new() };

    let dir = std::env::temp_dir().join(format!("crm-sync-bench-writer-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("contracts"))?;
    std::fs::write(dir.join("contracts/hubspot.toml"), include_str!("../../../contracts/hubspot.toml"))?;
    let backlog: Vec<String> = (0..tenants).map(|t| format!("bt{t}")).collect();
    let live: Vec<String> = (0..tenants).map(|t| format!("lt{t}")).collect();
    let mut config = String::new();
    let mut secrets = vec![];
    for t in &backlog {
        sim.account(t, Some(burst))?;
        config += &format!(
            "[tenants.{t}]\ndefault_region = \"US\"\n[tenants.{t}.crms.hubspot]\nplan = \"professional\"\ncredentials_secret = \"TOK_{}\"\nbase_url = \"{url}/hubspot\"\nlimits = {{ burst_per_10s = {burst} }}\n",
            t.to_uppercase()
        );
        secrets.push((format!("TOK_{}", t.to_uppercase()), format!("tok-{t}")));
    }
    for t in &live {
        sim.account(t, None)?;
        config += &format!(
            "[tenants.{t}]\ndefault_region = \"US\"\n[tenants.{t}.crms.hubspot]\nplan = \"professional\"\ncredentials_secret = \"TOK_{}\"\nbase_url = \"{url}/hubspot\"\n",
            t.to_uppercase()
        );
        secrets.push((format!("TOK_{}", t.to_uppercase()), format!("tok-{t}")));
    }
    let tenants_file = dir.join("tenants.toml");
    std::fs::write(&tenants_file, config)?;
    let prefix = format!("crm-sync-bench-writer-{}", std::process::id());
    let spawn = |bin: &str, args: &[&str]| -> anyhow::Result<Child> {
        Ok(Command::new(sibling_binary(bin)?)
            .args(args)
            .envs(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("TENANTS_CONFIG", &tenants_file)
            .env("CONTRACTS_DIR", dir.join("contracts"))
            .env("REDIS_URL", redis_url)
            .env("REDIS_KEY_PREFIX", &prefix)
            .env("WRITER_COMMIT_INTERVAL", "200ms")
            .env("KAFKA_OPTIONS", format!("fetch.wait.max.ms={fetch_wait_ms}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?)
    };

    // Phase 1: a backlog, limit-bound.
    eprintln!("phase 1: {records} write requests for {tenants} tenants at {burst} requests / 10 s each…");
    produce_all(&bootstrap, &topics.crm_writes(Crm::Hubspot), records, |i| {
        let r = request(&backlog[i % tenants], i);
        Ok((r.tenant_id.clone(), codec::encode(&r)?))
    })?;
    children.0.push(spawn("writer", &["--crm", "hubspot"])?);
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (done_at, written) = loop {
        let written: u64 = backlog.iter().map(|t| sim.state(t).map(|s| s.0).unwrap_or(0)).sum();
        if written > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if written as usize >= records || Instant::now() > deadline {
            break (Instant::now(), written);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = done_at.duration_since(first.unwrap_or(done_at)).max(Duration::from_millis(1));
    let (mut calls, mut throttled) = (0u64, 0u64);
    for t in &backlog {
        let (_, c) = sim.state(t)?;
        calls += count(&c, "calls/batch/", "201") + count(&c, "calls/batch/", "200");
        throttled += all_429(&c);
    }
    // The limit allows `burst` per 10 s per tenant; a run spends them at the start and then as
    // they come back, so its call rate per tenant is read against the limit's rate.
    let per_tenant_rate = calls as f64 / tenants as f64 / elapsed.as_secs_f64();
    let limit_rate = burst as f64 / 10.0;
    println!("\nbench writer, phase 1 (backlog): {records} records, {tenants} tenants, each portal limited to {burst} requests / 10 s");
    println!("  written           {written} records in {:.1} s: {:.0} records/s", elapsed.as_secs_f64(), written as f64 / elapsed.as_secs_f64());
    println!("  API calls         {calls} batch writes ({:.1} records per call), plus 1 contact search per tenant", written as f64 / calls.max(1) as f64);
    println!("  429s              {throttled}");
    println!(
        "  budget            {per_tenant_rate:.3} calls/s per tenant against a limit of {limit_rate:.3}/s: {:.0}% utilisation \
         (tokens return one window + 1 s transit margin after use)",
        100.0 * per_tenant_rate / limit_rate
    );

    // Phase 2: the whole pipeline, under budget.
    children.0.push(spawn("normaliser", &[])?);
    children.0.push(spawn("deduper", &[])?);
    std::thread::sleep(Duration::from_secs(4)); // consumer groups join
    let n = rate * seconds;
    eprintln!("phase 2: {n} calls to calls.raw at {rate}/s through normaliser, deduper and writer…");
    let producer: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "0").create()?;
    let mut produced_at: HashMap<String, i64> = HashMap::new();
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let t = &live[i % tenants];
        let ev = CallEvent {
            tenant_id: t.clone(),
            call_id: format!("l{i}"),
            direction: CallDirection::Inbound,
            from_number: "(415) 555-2671".into(),
            to_number: "+1 650 253 0000".into(),
            started_at: crm_common::emit::now_ms(),
            ..crate::bench_call(i, tenants)
        };
        produced_at.insert(format!("{t}/l{i}"), crm_common::emit::now_ms());
        let payload = codec::encode(&ev)?;
        producer.send(rdkafka::producer::BaseRecord::to(&topics.calls_raw).key(t).payload(&payload)).map_err(|(e, _)| e)?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))?;
    let reader = TopicReader::new(&bootstrap, &[&topics.audit])?;
    let mut latencies: Vec<i64> = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    while latencies.len() < n && Instant::now() < deadline {
        for m in reader.read_until(Duration::from_millis(500), |b| b.len() >= 2000) {
            let Ok(a) = codec::decode::<AuditRecord>(m.payload.as_deref().unwrap_or_default()) else { continue };
            if a.stage == Stage::Writer && a.operation == "write" && a.outcome == AuditOutcome::Succeeded {
                if let Some(t0) = a.call_id.as_ref().and_then(|c| produced_at.get(&format!("{}/{c}", a.tenant_id))) {
                    latencies.push(a.occurred_at - t0);
                }
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0);
    let mut throttled2 = 0;
    for t in &live {
        throttled2 += all_429(&sim.state(t)?.1);
    }
    println!("\nbench writer, phase 2 (latency under budget): {n} calls at {rate}/s over {tenants} tenants (plan limits), consumers' fetch.wait.max.ms={fetch_wait_ms}");
    println!("  calls.raw → HubSpot write   p50 {} ms   p99 {} ms   max {} ms   ({} of {n} measured, {throttled2} 429s)", pct(0.5), pct(0.99), latencies.last().copied().unwrap_or(0), latencies.len());

    drop(children);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let conn = rt.block_on(crm_common::redis_conn::connect(redis_url))?;
    let removed = rt.block_on(crm_common::redis_conn::delete_prefix(&conn, &prefix))?;
    eprintln!("removed {removed} Redis keys ({prefix}:*)");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
