//! `bench writer --crm <crm> --kind lead`: leads through one CRM's writer against crm-sim,
//! each backlog tenant held to the lowered limit of `bench writer` (HubSpot's 10-second
//! burst; Salesforce's daily allowance), in three rounds of the same size:
//!
//! 1. **new people, cold**: every lead a person nobody has (search, create);
//! 2. **the same people again, warm**: another source's lead of each (the person claim
//!    remembers the record: read by id while a search may not show it yet, or wherever a
//!    read costs no more than a search; else searched; then an update);
//! 3. **people the CRM has and crm-sync never wrote**: seeded in the CRM first (search,
//!    update).
//!
//! Each round prints leads/s, the CRM requests per lead by what they did (search, read,
//! create, update), throttles, and the share of the limit's pace used (the requests that
//! spend the limit against the fastest a perfectly paced client could send them).

use crate::writer::{all_throttled, limit_text, paced, Args, Profile, Setup};
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::{fixtures, ActivityKind, AuditOutcome, AuditRecord, Stage};
use crm_common::kafka::reader::TopicReader;
use crm_common::kafka::Kafka;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a CRM request did, from crm-sim's counter label ("POST /hubspot/crm/v3/objects/contacts").
fn what(label: &str) -> &'static str {
    let method = label.split_whitespace().next().unwrap_or_default();
    if label.contains("/search") {
        "search"
    } else if label.contains("/query") {
        // Salesforce's SOQL: by email (a search) or by id (a read); told apart below by count.
        "query"
    } else if label.contains("oauth") || label.contains("/token") {
        "token"
    } else {
        match method {
            "GET" => "read",
            "POST" => "create",
            "PATCH" | "PUT" => "update",
            _ => "other",
        }
    }
}

/// Every backlog tenant's requests so far, by what they did, and those that spend the limit.
fn requests(p: &Profile, setup: &Setup) -> anyhow::Result<(BTreeMap<&'static str, u64>, Vec<u64>, u64)> {
    let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut paced_per_tenant, mut throttled) = (vec![], 0);
    for t in &setup.backlog {
        let (_, c) = setup.sim.state(p, t)?;
        let mut paced_n = 0;
        for (label, statuses) in c.as_object().cloned().unwrap_or_default() {
            let n: u64 = statuses.as_object().into_iter().flat_map(|s| s.values()).map(|v| v.as_u64().unwrap_or(0)).sum();
            *by.entry(what(&label)).or_default() += n;
            if paced(p.crm, &label) {
                paced_n += n;
            }
        }
        paced_per_tenant.push(paced_n);
        throttled += all_throttled(&c, p.throttle);
    }
    Ok((by, paced_per_tenant, throttled))
}

/// Produces `n` leads per round, spread over the backlog tenants, and waits for every final
/// audit record of the writer.
fn round(p: &Profile, setup: &Setup, reader: &TopicReader, name: &str, (ids, emails): (&str, &str), n: usize) -> anyhow::Result<()> {
    let before = requests(p, setup)?;
    let tenants = setup.backlog.clone();
    let now = crm_common::clock::now_ms();
    let started = Instant::now();
    crate::produce_all(&setup.broker.bootstrap_servers(), &Topics::default().crm_writes(p.crm), n, |i| {
        let tenant = &tenants[i % tenants.len()];
        let mut r = fixtures::lead_request(tenant, &format!("{ids}{i}"), p.crm);
        let l = r.lead.as_mut().expect("a lead");
        l.email = Some(format!("{emails}{i}@bench.example"));
        l.phone_e164 = None;
        l.submitted_at = now;
        l.attribution.utm_campaign = Some(name.split_whitespace().next().unwrap_or("bench").to_string());
        r.trace_id = format!("{:032x}", i + 1);
        Ok((tenant.clone(), codec::encode(&r)?))
    })?;
    let (mut finals, mut failed) = (0usize, 0usize);
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while finals < n && Instant::now() < deadline {
        for m in reader.read_until(Duration::from_millis(200), |b| b.len() >= 500) {
            let Ok(a) = codec::decode::<AuditRecord>(m.payload.as_deref().unwrap_or_default()) else { continue };
            if a.stage == Stage::Writer && a.operation == "write" && a.kind == Some(ActivityKind::Lead) {
                first.get_or_insert_with(Instant::now);
                finals += 1;
                if !matches!(a.outcome, AuditOutcome::Succeeded | AuditOutcome::Duplicate) {
                    failed += 1;
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let (after, paced_after, throttled_after) = requests(p, setup)?;
    let (by_before, paced_before, throttled_before) = before;
    let delta: BTreeMap<&str, u64> = after.iter().map(|(k, v)| (*k, v - by_before.get(k).copied().unwrap_or(0))).collect();
    let total: u64 = delta.iter().filter(|(k, _)| **k != "token").map(|(_, v)| v).sum();
    let per = |k: &str| delta.get(k).copied().unwrap_or(0) as f64 / n.max(1) as f64;
    println!("  {name}");
    println!("    written         {finals} of {n} leads in {secs:.1} s: {:.1} leads/s ({failed} not written)", finals as f64 / secs);
    println!(
        "    requests        {:.2} per lead: {:.2} search, {:.2} query (SOQL), {:.2} read, {:.2} create, {:.2} update",
        total as f64 / n.max(1) as f64,
        per("search"),
        per("query"),
        per("read"),
        per("create"),
        per("update")
    );
    println!("    throttled ({})   {}", p.throttle, throttled_after - throttled_before);
    let spent: Vec<u64> = paced_after.iter().zip(&paced_before).map(|(a, b)| a - b).collect();
    match p.window {
        Some((window, _)) => {
            let most = spent.iter().copied().max().unwrap_or(0);
            let best = ((most as f64 / p.limit as f64).ceil() - 1.0).max(0.0) * window;
            println!(
                "    budget          at most {most} requests of a tenant spend {} (search has its own limit); {best:.0} s at best: {:.0}% of the limit's pace",
                limit_text(p),
                100.0 * best / secs
            );
        }
        None => println!(
            "    budget          no rate limit: {} of the org's {} daily requests per tenant",
            spent.iter().sum::<u64>() / spent.len().max(1) as u64,
            p.limit
        ),
    }
    Ok(())
}

pub fn run(p: &Profile, a: &Args, records: usize, setup: &mut Setup) -> anyhow::Result<()> {
    let crm = p.crm.as_str();
    let kafka = Kafka::local(setup.broker.bootstrap_servers());
    let reader = TopicReader::new(&kafka, &[Topics::default().audit.as_str()])?;
    for _ in 0..a.replicas.max(1) {
        setup.spawn("writer", &["--crm", crm], a)?;
    }
    // Round 3's people, in the CRM before crm-sync sees a lead of theirs.
    let k = p.kind.as_ref().expect("the lead parts");
    for (i, t) in (0..records).map(|i| (i, &setup.backlog[i % setup.backlog.len()])) {
        let person = match p.crm {
            crm_common::events::Crm::Salesforce => json!({"LastName": "Known", "Email": format!("known{i}@bench.example")}),
            _ => (k.contact)(&format!("known{i}@bench.example")),
        };
        // A contact: HubSpot's people are contacts; Salesforce's and Zoho's leads create Leads.
        let object = match p.crm {
            crm_common::events::Crm::Salesforce => "Contact",
            crm_common::events::Crm::Zoho => "Contacts",
            _ => k.object,
        };
        setup.sim.admin(reqwest::Method::POST, &format!("/accounts/{crm}/{t}/objects/{object}"), Some(person))?;
    }
    println!(
        "\nbench writer --crm {crm} --kind lead: {records} leads a round, {} tenants, each held to {}, {} writer replicas",
        setup.backlog.len(),
        limit_text(p),
        a.replicas.max(1)
    );
    round(p, setup, &reader, "new people, cold (search, create)", ("new-", "new"), records)?;
    round(
        p,
        setup,
        &reader,
        "the same people from another source, warm (the person claim: read by id while search may not show them, else search; update)",
        ("again-", "new"),
        records,
    )?;
    round(p, setup, &reader, "people the CRM has, new to crm-sync (search, update)", ("known-", "known"), records)?;
    Ok(())
}
