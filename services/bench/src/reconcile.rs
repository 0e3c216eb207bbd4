//! `bench reconcile`: what a reconcile pass costs, per CRM.
//!
//! For each CRM: `records` calls are written through the writer into a crm-sim account at
//! its plan's limits and stored by the audit-sink (a database of the bench's own); the writer
//! is stopped, so every request crm-sim counts afterwards is the reconciler's. A person then
//! changes an owned, restorable field on `drift_pct` percent of them, and `crm-sync reconcile`
//! runs twice as an operator would: the first pass finds and restores the drift, the second
//! finds parity. Prints, per pass: records checked per second (the whole command: audit
//! store query, re-reading the write requests from crm.writes, the CRM reads, repairs) and
//! API requests per 100 records, by endpoint.

use crate::produce_all;
use crate::writer::{broker_and_sim, profile, request, Killed};
use crm_common::audit_store;
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::*;
use crm_dev::sibling_binary;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Requests per endpoint, summed over statuses.
fn requests(counters: &Value) -> BTreeMap<String, u64> {
    counters
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_object().map_or(0, |s| s.values().map(|n| n.as_u64().unwrap_or(0)).sum())))
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect()
}

pub fn run(crms: &[Crm], records: usize, drift_pct: usize, database_url: &str, redis_url: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut results = vec![];
    for &crm in crms {
        let db = format!("crm_sync_bench_reconcile_{}_{}", crm.as_str(), std::process::id());
        let url = rt.block_on(audit_store::create_database(database_url, &db))?;
        let prefix = format!("crm-sync-bench-reconcile-{}", std::process::id());
        let r = one_crm(crm, records, drift_pct, &url, redis_url, &prefix);
        rt.block_on(audit_store::drop_database(database_url, &db))?;
        let conn = rt.block_on(crm_common::redis_conn::connect_node(redis_url))?;
        rt.block_on(crm_common::redis_conn::delete_prefix(&conn, &prefix))?;
        results.push(r?);
    }
    println!("\nbench reconcile: {records} written calls per CRM, {drift_pct}% changed by a person before the first pass (plan limits, 50% of each left to live writes)");
    for r in results {
        print!("{r}");
    }
    Ok(())
}

fn one_crm(crm: Crm, records: usize, drift_pct: usize, database_url: &str, redis_url: &str, prefix: &str) -> anyhow::Result<String> {
    let p = profile(crm);
    let name = crm.as_str();
    let topics = Topics::default();
    let (broker, sim, mut children) = broker_and_sim()?;
    let bootstrap = broker.bootstrap_servers();
    let url = sim.url.clone();

    let tenant = "rt0";
    let dir = std::env::temp_dir().join(format!("crm-sync-bench-reconcile-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("contracts"))?;
    std::fs::write(dir.join(format!("contracts/{name}.toml")), p.contract)?;
    sim.account(&p, tenant, false)?;
    let plan = (p.account)(tenant)["plan"].as_str().unwrap_or_default().to_string();
    let tenants_file = dir.join("tenants.toml");
    std::fs::write(
        &tenants_file,
        format!("[tenants.{tenant}]\ndefault_region = \"US\"\n[tenants.{tenant}.crms.{name}]\nplan = \"{plan}\"\ncredentials_secret = \"TOK_RT0\"\nbase_url = \"{url}/{name}\"\n"),
    )?;
    let command = |bin: &str| -> anyhow::Result<Command> {
        let mut c = Command::new(sibling_binary(bin)?);
        c.env("TOK_RT0", format!("tok-{tenant}"))
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("TENANTS_CONFIG", &tenants_file)
            .env("CONTRACTS_DIR", dir.join("contracts"))
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("REDIS_KEY_PREFIX", prefix)
            .env("CRM_SYNC_TOKEN_KEY", crm_dev::DEV_TOKEN_KEY)
            .env("RECONCILE_SETTLE", "0s")
            .env("PIPELINE_COMMIT_INTERVAL_MS", "100")
            .env("RUST_LOG", "warn");
        Ok(c)
    };
    let spawn = |bin: &str, args: &[&str]| -> anyhow::Result<Child> { Ok(command(bin)?.args(args).stdout(Stdio::null()).spawn()?) };

    eprintln!("{name}: writing {records} calls…");
    produce_all(&bootstrap, &topics.crm_writes(crm), records, |i| {
        let r = request(crm, tenant, i);
        Ok((r.tenant_id.clone(), codec::encode(&r)?))
    })?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut store = rt.block_on(audit_store::AuditStore::connect(database_url))?;
    rt.block_on(store.migrate())?;
    children.0.push(spawn("audit-sink", &[])?);
    let writer = Killed(vec![spawn("writer", &["--crm", name])?]);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let stored = rt
            .block_on(store.written(tenant, name, crm_common::events::ActivityKind::Call, 0, crm_common::clock::now_ms() + 3_600_000))?
            .len();
        if stored >= records {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{name}: only {stored} of {records} writes stored");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(writer); // SIGTERM, and waits

    // A person re-opens some of them (admin edits spend none of the CRM's limits).
    let listed = sim.admin(reqwest::Method::GET, &format!("/accounts/{name}/{tenant}/objects/{}?deleted=false", p.calls), None)?;
    let ids: Vec<String> = listed["records"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_str().map(String::from)).collect();
    anyhow::ensure!(ids.len() == records, "{name}: {} records live, {records} expected", ids.len());
    let changed = records * drift_pct / 100;
    let (field, value) = p.reopen;
    for id in ids.iter().step_by((records / changed.max(1)).max(1)).take(changed) {
        sim.admin(reqwest::Method::PATCH, &format!("/accounts/{name}/{tenant}/objects/{}/{id}", p.calls), Some(json!({ field: value() })))?;
    }

    let mut out = format!("  {name}\n");
    for pass in ["first (drift)", "second (parity)"] {
        let before = requests(&sim.state(&p, tenant)?.1);
        let started = Instant::now();
        let o = command("crm-sync")?.args(["reconcile", "--tenant", tenant, "--crm", name, "--json"]).stderr(Stdio::null()).output()?;
        let took = started.elapsed().as_secs_f64();
        let after = requests(&sim.state(&p, tenant)?.1);
        let report: Value = serde_json::from_slice(o.stdout.split(|b| *b == b'\n').next().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("{name}: reconcile printed no report ({e}): {}", String::from_utf8_lossy(&o.stdout)))?;
        let spent = delta(&before, &after);
        let total: u64 = spent.values().sum();
        let checked = report["checked"].as_u64().unwrap_or(0);
        out += &format!(
            "    {pass:<16} checked {checked}, drifted {}, repaired {}, dead-lettered {} in {took:.1} s: {:.0} records checked/s; {total} API requests, {:.1} per 100 records\n",
            report["drifted"],
            report["repaired"],
            report["dead_lettered"],
            checked as f64 / took,
            100.0 * total as f64 / checked.max(1) as f64
        );
        for (endpoint, n) in &spent {
            out += &format!("                     {n:>6}  {endpoint}\n");
        }
    }
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}
