//! `bench tenants --crm <crm>`: one writer for many tenants (10,000 by default), each with its
//! own account at crm-sim, its own secret and its own buckets. Two phases, each with a writer
//! process of its own so that its counters are the phase's:
//!
//! 1. **Many tenants, a few records each** (`--records`, default 2): records/s, API requests
//!    and Redis round trips per record, the writer's peak RSS, and what Redis holds after.
//! 2. **A burst beside quiet tenants**: `--burst-tenants` (100) send `--burst-records` (300)
//!    each, held to `--burst-limit` requests per window (their buckets run dry), and right
//!    behind them on the same partitions `--quiet` (100) other tenants send one record each.
//!    A quiet tenant's latency (produce → written) against how long the burst takes shows
//!    whether anyone waits behind another tenant's empty bucket.
//!
//! Redis round trips come from the writer's own count (`crm_sync.redis.round_trips`), which
//! it logs when it stops (JSON, to a file; `BENCH_WRITER_LOG` sets its RUST_LOG); API
//! requests from crm-sim's answers summed over every account.

use crate::produce_all;
use crate::writer::{broker_and_sim, profile, request, Killed, Profile, ServiceEnv, Sim};
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::*;
use crm_common::kafka::reader::TopicReader;
use crm_common::kafka::Kafka;
use crm_dev::sibling_binary;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "hubspot")]
    pub crm: Crm,
    #[arg(long, default_value_t = 10_000)]
    pub tenants: usize,
    /// Phase 1: write requests per tenant.
    #[arg(long, default_value_t = 2)]
    pub records: usize,
    #[arg(long, default_value_t = 100)]
    pub burst_tenants: usize,
    #[arg(long, default_value_t = 300)]
    pub burst_records: usize,
    /// The burst tenants' limit, in the CRM's own window (HubSpot requests per 10 s, Zoho
    /// per minute, Pipedrive per 2 s; Salesforce requests per day).
    #[arg(long, default_value_t = 1)]
    pub burst_limit: u64,
    /// Tenants sending one record each right behind the burst.
    #[arg(long, default_value_t = 100)]
    pub quiet: usize,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// A writer process whose log (JSON, to a file) holds its round-trip count when it stops.
struct Writer {
    child: Child,
    log: std::path::PathBuf,
}

impl Writer {
    fn peak_rss_mib(&self) -> f64 {
        crate::peak_rss_kib(self.child.id()).unwrap_or(0) as f64 / 1024.0
    }

    /// SIGTERM, wait, and the Redis round trips it logged on the way out.
    fn stop(mut self) -> anyhow::Result<u64> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        let log = std::fs::read_to_string(&self.log)?;
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["fields"]["redis_round_trips"].as_u64())
            .ok_or_else(|| anyhow::anyhow!("the writer logged no redis_round_trips on stopping (log: {})", self.log.display()))
    }
}

struct Run {
    p: Profile,
    sim: Sim,
    broker: crm_dev::DevBroker,
    _sim: Killed,
    names: Vec<String>,
    dir: std::path::PathBuf,
    tenants_file: std::path::PathBuf,
    secrets: Vec<(String, String)>,
    prefix: String,
    redis_url: String,
}

impl Run {
    /// Requests crm-sim answered for this CRM, over every account: (all, throttled).
    fn answers(&self) -> anyhow::Result<(u64, u64)> {
        let v = self.sim.admin(reqwest::Method::GET, "/accounts", None)?;
        let by_status = v["answers"][self.p.crm.as_str()].as_object().cloned().unwrap_or_default();
        let all = by_status.values().filter_map(|n| n.as_u64()).sum();
        Ok((all, by_status.get(self.p.throttle).and_then(|n| n.as_u64()).unwrap_or(0)))
    }

    /// A writer reading `tenants_file` (phase 1's, or phase 2's with the burst limits).
    /// One record for `tenant` through a writer just started, so what follows meets a writer
    /// that has joined its group and read its tenants (its cost is in the writer's counts).
    fn warm_up(&self, audit: &TopicReader, tenant: &str, call: &str) -> anyhow::Result<()> {
        let topic = Topics::default().crm_writes(self.p.crm);
        produce_all(&self.broker.bootstrap_servers(), &topic, 1, |_| {
            Ok((tenant.to_string(), codec::encode(&named(self.p.crm, tenant, call, 0))?))
        })?;
        let warmed = self.written(audit, 1, Duration::from_secs(120));
        anyhow::ensure!(warmed.written.contains_key(&format!("{tenant}/{call}")), "the writer wrote nothing in 120 s");
        Ok(())
    }

    fn writer(&self, label: &str, tenants_file: &std::path::Path) -> anyhow::Result<Writer> {
        let log = self.dir.join(format!("writer-{label}.log"));
        let mut cmd = Command::new(sibling_binary("writer")?);
        let env = ServiceEnv { broker: &self.broker, tenants_file, dir: &self.dir, redis_url: &self.redis_url, prefix: &self.prefix };
        env.apply(&mut cmd, &self.secrets);
        let child = cmd
            .args(["--crm", self.p.crm.as_str()])
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", std::env::var("BENCH_WRITER_LOG").unwrap_or_else(|_| "warn,writer=info".into()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Writer { child, log })
    }

    /// Reads the audit topic until `want` write requests of `tenants` are written (or
    /// `timeout`): when each was written, by "tenant/call", and the CRM calls audited.
    fn written(&self, reader: &TopicReader, want: usize, timeout: Duration) -> Tally {
        let mut t = Tally::default();
        let deadline = Instant::now() + timeout;
        while t.written.len() < want && Instant::now() < deadline {
            for m in reader.read_until(Duration::from_millis(500), |b| b.len() >= 5000) {
                let Ok(a) = codec::decode::<AuditRecord>(m.payload.as_deref().unwrap_or_default()) else { continue };
                if a.stage != Stage::Writer {
                    continue;
                }
                if a.operation == "write" {
                    if a.outcome == AuditOutcome::Succeeded {
                        t.written.insert(format!("{}/{}", a.tenant_id, a.call_id.as_deref().unwrap_or_default()), a.occurred_at);
                    } else if a.outcome == AuditOutcome::DeadLettered {
                        t.failed += 1;
                    }
                }
            }
        }
        t
    }
}

#[derive(Default)]
struct Tally {
    written: HashMap<String, i64>,
    failed: usize,
}

fn redis_memory(conn: &mut redis::Connection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO").arg("memory").query(conn)?;
    let used = info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let keys: u64 = redis::cmd("DBSIZE").query(conn)?;
    Ok((used, keys))
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let p = Profile { limit: a.burst_limit, ..profile(a.crm) };
    let crm = p.crm.as_str();
    anyhow::ensure!(a.burst_tenants + a.quiet <= a.tenants, "--burst-tenants + --quiet must not exceed --tenants");
    let (broker, sim, sim_child) = broker_and_sim()?;
    let dir = std::env::temp_dir().join(format!("crm-sync-bench-tenants-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("contracts"))?;
    std::fs::write(dir.join(format!("contracts/{crm}.toml")), p.contract)?;
    let names: Vec<String> = (0..a.tenants).map(|i| format!("t{i:05}")).collect();
    eprintln!("creating {} accounts at crm-sim and the tenants file…", a.tenants);
    let started = Instant::now();
    // Phase 1 runs at the plans' limits; phase 2's writer reads a second file in which the
    // burst tenants are held to --burst-limit (crm-sim is told the same before it starts).
    let mut config = String::with_capacity(a.tenants * 200);
    let mut burst_config = String::with_capacity(a.tenants * 200);
    let mut secrets = Vec::with_capacity(a.tenants);
    for (i, t) in names.iter().enumerate() {
        sim.account(&p, t, false)?;
        let plan = (p.account)(t)["plan"].as_str().unwrap_or_default().to_string();
        let entry = format!(
            "[tenants.{t}]\ndefault_region = \"US\"\n[tenants.{t}.crms.{crm}]\nplan = \"{plan}\"\ncredentials_secret = \"TOK_{}\"\nbase_url = \"{}/{crm}\"\n",
            t.to_uppercase(),
            sim.url
        );
        config += &entry;
        config.push('\n');
        burst_config += &entry;
        if i < a.burst_tenants {
            burst_config += &(p.tenant_limit)(p.limit);
            burst_config.push('\n');
        }
        burst_config.push('\n');
        secrets.push((format!("TOK_{}", t.to_uppercase()), format!("tok-{t}")));
    }
    let tenants_file = dir.join("tenants.toml");
    std::fs::write(&tenants_file, config)?;
    std::fs::write(dir.join("tenants-burst.toml"), burst_config)?;
    let prefix = format!("crm-sync-bench-tenants-{}", std::process::id());
    crm_dev::fresh_claim_store(&a.redis_url, &prefix, &tenants_file)?;
    eprintln!("set up in {:.1} s", started.elapsed().as_secs_f64());
    let run = Run { p, sim, broker, _sim: sim_child, names, dir, tenants_file, secrets, prefix, redis_url: a.redis_url.clone() };
    let result = phases(&run, a);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let conn = rt.block_on(crm_common::redis_conn::connect_node(&a.redis_url))?;
    let removed = rt.block_on(crm_common::redis_conn::delete_prefix(&conn, &run.prefix))?;
    eprintln!("removed {removed} Redis keys ({}:*)", run.prefix);
    let _ = std::fs::remove_dir_all(&run.dir);
    result
}

fn phases(run: &Run, a: &Args) -> anyhow::Result<()> {
    let crm = run.p.crm;
    let topic = Topics::default().crm_writes(crm);
    let bootstrap = run.broker.bootstrap_servers();
    let kafka = Kafka::local(&bootstrap);
    let audit = TopicReader::new(&kafka, &[&Topics::default().audit])?;
    let mut redis = redis::Client::open(a.redis_url.as_str())?.get_connection()?;

    // Phase 1: every tenant a few records, tenants interleaved, to a writer that is up.
    let n = a.tenants * a.records;
    let w = run.writer("phase1", &run.tenants_file)?;
    run.warm_up(&audit, &run.names[0], "w1")?;
    let (mem0, keys0) = redis_memory(&mut redis)?;
    let answered0 = run.answers()?;
    eprintln!("phase 1: {n} {} write requests from {} tenants ({} each)…", crm.as_str(), a.tenants, a.records);
    let t0 = crm_common::clock::now_ms();
    produce_all(&bootstrap, &topic, n, |i| {
        let t = &run.names[i % a.tenants];
        Ok((t.clone(), codec::encode(&request(crm, t, i))?))
    })?;
    let tally = run.written(&audit, n, Duration::from_secs(900));
    let last = tally.written.values().max().copied().unwrap_or(t0);
    let secs = ((last - t0) as f64 / 1000.0).max(0.001);
    let rss = w.peak_rss_mib();
    let (mem1, keys1) = redis_memory(&mut redis)?;
    let trips = w.stop()?;
    let answered1 = run.answers()?;
    let (api, throttled) = (answered1.0 - answered0.0, answered1.1 - answered0.1);
    let written = tally.written.len();
    println!("\nbench tenants --crm {}, phase 1: {} tenants × {} records, one writer", crm.as_str(), a.tenants, a.records);
    println!(
        "  written             {written} of {n} in {secs:.1} s from the first produced to the last written: {:.0} records/s ({} dead-lettered)",
        written as f64 / secs,
        tally.failed,
    );
    println!(
        "  API requests        {api} ({:.2} per record; {throttled} throttled; contact, owner and context lookups are per tenant, cold)",
        api as f64 / written.max(1) as f64,
    );
    println!("  Redis round trips   {trips} ({:.2} per record; goal ≤ 3)", trips as f64 / written.max(1) as f64);
    println!("  writer peak RSS     {rss:.1} MiB (goal ≤ 256 MiB)");
    println!(
        "  Redis               +{:.1} MiB used, +{} keys ({:.0} bytes per tenant)",
        (mem1 as f64 - mem0 as f64) / 1_048_576.0,
        keys1 as i64 - keys0 as i64,
        (mem1 as f64 - mem0 as f64) / a.tenants as f64
    );

    // Phase 2: the burst, then the quiet tenants right behind it.
    let burst: Vec<&String> = run.names[..a.burst_tenants].iter().collect();
    let quiet: Vec<&String> = run.names[a.burst_tenants..a.burst_tenants + a.quiet].iter().collect();
    let nb = a.burst_tenants * a.burst_records;
    eprintln!(
        "phase 2: {nb} records from {} tenants held to {} {}, then one record each from {} quiet tenants…",
        a.burst_tenants,
        a.burst_limit,
        window_name(&run.p),
        a.quiet
    );
    for t in &burst {
        let path = format!("/accounts/{}/{t}/limits", crm.as_str());
        run.sim.admin(reqwest::Method::PATCH, &path, Some((run.p.sim_limit)(a.burst_limit)))?;
    }
    let w = run.writer("phase2", &run.dir.join("tenants-burst.toml"))?;
    run.warm_up(&audit, quiet[0], "w2")?;
    let answered0 = run.answers()?;
    let t0 = Instant::now();
    // One producer for both: the quiet tenants' latency is timed from their send.
    let source = crate::Source::new(&bootstrap)?;
    source.produce_all(&topic, nb, |i| {
        let t = burst[i % burst.len()];
        Ok((t.clone(), codec::encode(&named(crm, t, &format!("burst{i}"), n + i))?))
    })?;
    let produced_at: std::cell::RefCell<HashMap<String, i64>> = Default::default();
    source.produce_all(&topic, quiet.len(), |i| {
        let t = quiet[i];
        produced_at.borrow_mut().insert(format!("{t}/quiet{i}"), crm_common::clock::now_ms());
        Ok((t.clone(), codec::encode(&named(crm, t, &format!("quiet{i}"), n + nb + i))?))
    })?;
    let produced_at = produced_at.into_inner();
    let tally = run.written(&audit, nb + quiet.len(), Duration::from_secs(900));
    let secs = t0.elapsed().as_secs_f64();
    let rss = w.peak_rss_mib();
    let trips = w.stop()?;
    let answered1 = run.answers()?;
    let (api, throttled) = (answered1.0 - answered0.0, answered1.1 - answered0.1);
    let mut quiet_ms: Vec<i64> = produced_at.iter().filter_map(|(k, t)| tally.written.get(k).map(|w| w - t)).collect();
    quiet_ms.sort_unstable();
    let pct = |p: f64| quiet_ms.get(((quiet_ms.len() as f64 * p) as usize).min(quiet_ms.len().saturating_sub(1))).copied().unwrap_or(0);
    let burst_done = tally.written.iter().filter(|(k, _)| k.contains("/burst")).count();
    let written = tally.written.len();
    println!(
        "\nbench tenants --crm {}, phase 2: {} tenants × {} records held to {} {}, then {} quiet tenants × 1",
        crm.as_str(),
        a.burst_tenants,
        a.burst_records,
        a.burst_limit,
        window_name(&run.p),
        a.quiet
    );
    println!("  burst               {burst_done} of {nb} written in {secs:.1} s ({throttled} throttled)");
    println!(
        "  quiet tenants       {} of {} written; produce → written p50 {} ms, p99 {} ms, max {} ms (the burst took {:.1} s)",
        quiet_ms.len(),
        quiet.len(),
        pct(0.5),
        pct(0.99),
        quiet_ms.last().copied().unwrap_or(0),
        secs
    );
    println!("  API requests        {api} ({:.2} per record)", api as f64 / written.max(1) as f64);
    println!("  Redis round trips   {trips} ({:.2} per record, the wait for tokens included)", trips as f64 / written.max(1) as f64);
    println!("  writer peak RSS     {rss:.1} MiB");
    Ok(())
}

/// A write request for call `call` of `tenant` (unique trace id `i`).
fn named(crm: Crm, tenant: &str, call: &str, i: usize) -> CrmWriteRequest {
    let mut r = request(crm, tenant, i);
    r.call_id = call.into();
    r.call.call_id = call.into();
    r.idempotency_key = idempotency_key(tenant, call, crm);
    r
}

fn window_name(p: &Profile) -> &'static str {
    p.window.map_or("requests / day", |(_, name)| name)
}
