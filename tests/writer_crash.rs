//! SIGKILL the HubSpot writer mid-batch, several times, while crm-sim holds every batch
//! create for a while after applying it (the worst moment: written, not yet acknowledged,
//! not yet DONE). Restarted writers recover the orphaned claims by looking the records up.
//! crm-sim must end with exactly one record per call.

use crm_common::codec;
use crm_common::events::*;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::{normalised_call, Broker, RedisPrefix, TempFile};
use serde_json::json;
use std::time::{Duration, Instant};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const CALLS_PER_TENANT: usize = 60;
const KILLS: usize = 3;

fn live_keys(sim: &CrmSim) -> (usize, Vec<String>) {
    let mut live = 0;
    let mut doubled = vec![];
    for t in TENANTS {
        for (k, v) in sim.state("hubspot", t)["keys"].as_object().cloned().unwrap_or_default() {
            live += 1;
            if v["total"].as_u64() != Some(1) {
                doubled.push(format!("{k}: {v}"));
            }
        }
    }
    (live, doubled)
}

#[test]
fn one_record_per_call_across_repeated_sigkill_mid_batch() {
    let broker = Broker::start(3);
    let sim = CrmSim::start();
    let mut config = String::new();
    for t in TENANTS {
        sim.account(json!({
            "crm": "hubspot", "account": t, "plan": "professional",
            "tokens": [{"token": format!("tok-{t}"), "kind": "static"}],
            "fields": {"calls": {"crm_sync_key": {"type": "text", "unique": true}}},
            "key_field": {"object": "calls", "field": "crm_sync_key"},
        }));
        // Half the batch creates are applied, held 400 ms, then fail (502) although written;
        // the others are held 400 ms before they are applied.
        sim.fault("hubspot", t, json!({"kind": "502", "rate": 0.5, "after_write": true, "latency_ms": 400, "endpoint": "batch/create"}));
        sim.fault("hubspot", t, json!({"kind": "latency", "latency_ms": 400, "endpoint": "batch/create"}));
        config += &format!(
            "[tenants.{t}]\ndefault_region = \"US\"\n[tenants.{t}.crms.hubspot]\nplan = \"professional\"\ncredentials_secret = \"TOK_{}\"\nbase_url = \"{}/hubspot\"\n",
            t.to_uppercase(),
            sim.url
        );
    }
    let tenants = TempFile::new("tenants.toml", &config);
    let prefix = RedisPrefix::new("writer-crash");
    let inputs: Vec<_> = TENANTS
        .iter()
        .flat_map(|t| (0..CALLS_PER_TENANT).map(move |i| (*t, i)))
        .map(|(t, i)| {
            let call = format!("c{i}");
            let r = CrmWriteRequest {
                tenant_id: t.into(),
                call_id: call.clone(),
                crm: Crm::Hubspot,
                idempotency_key: idempotency_key(t, &call, Crm::Hubspot),
                version: 1,
                call: normalised_call(t, &call, 1),
                requested_at: 0,
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            };
            (t.to_string(), codec::encode(&r).unwrap(), vec![])
        })
        .collect();
    let env = [
        // A killed writer's claims are recoverable after this long.
        ("WRITER_LEASE", "2s"),
        ("WRITER_RETRY_BASE", "50ms"),
        ("TOK_ACME", "tok-acme"),
        ("TOK_GLOBEX", "tok-globex"),
        ("TOK_INITECH", "tok-initech"),
    ];

    // Trickle the calls in so lanes form several batches and kills land between them.
    let producer = std::thread::scope(|s| {
        let h = s.spawn(|| {
            // About 15 s of input: longer than the kill rounds (each restart waits out the
            // killed member's session), so the kills land while calls are still arriving.
            for chunk in inputs.chunks(9) {
                broker.produce("crm.writes.hubspot", chunk);
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        let mut mid = 0;
        for round in 0..KILLS {
            let (before, _) = live_keys(&sim);
            let w = crm_sync_tests::writer::spawn(&broker, "hubspot", &tenants, &prefix, &env);
            let target = before + 5 + (rand::random::<u32>() % 20) as usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            while live_keys(&sim).0 < target && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Land inside a held batch create (claimed, sent, not answered): the claims it
            // holds are orphaned, and the next writer must recover them by lookup.
            let in_flight = || TENANTS.iter().any(|t| sim.state("hubspot", t)["usage"]["in_flight"].as_u64().unwrap_or(0) > 0);
            while !in_flight() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            w.kill9();
            let (now, _) = live_keys(&sim);
            if now < inputs.len() {
                mid += 1;
            }
            eprintln!("round {round}: SIGKILL with {now} of {} calls in HubSpot", inputs.len());
        }
        h.join().unwrap();
        mid
    });
    assert!(producer >= 2, "only {producer} kills landed mid-stream");

    let last = crm_sync_tests::writer::spawn(&broker, "hubspot", &tenants, &prefix, &env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while live_keys(&sim).0 < inputs.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (live, doubled) = live_keys(&sim);
    assert_eq!(live, inputs.len(), "every call reached HubSpot");
    assert!(doubled.is_empty(), "calls written twice: {doubled:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.committed("writer-hubspot", "crm.writes.hubspot") < inputs.len() as i64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(broker.committed("writer-hubspot", "crm.writes.hubspot"), inputs.len() as i64);
    assert!(last.terminate().success());

    // HubSpot's unique property alone would keep records single; the writer must also know
    // each call was written (a write that met its own key counts) and send nothing to the DLQ.
    let out = broker.read(&["sync.audit", "sync.dlq"], usize::MAX, Duration::from_secs(5));
    let dlq: Vec<DeadLetter> = out.iter().filter(|m| m.topic == "sync.dlq").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    assert!(dlq.is_empty(), "{} dead letters, e.g. {:?}", dlq.len(), dlq.first());
    let audit: Vec<AuditRecord> = out.iter().filter(|m| m.topic == "sync.audit").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let written: std::collections::HashSet<String> = audit
        .iter()
        .filter(|a| a.operation == "write" && matches!(a.outcome, AuditOutcome::Succeeded | AuditOutcome::Duplicate))
        .map(|a| a.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(written.len(), inputs.len(), "every call's write is accounted for in audit");
    let recovered = audit.iter().filter(|a| a.operation == "write" && a.detail.contains("recovered")).count();
    let met_own_key = audit.iter().filter(|a| a.operation == "write" && a.detail.starts_with("updated") && !a.detail.contains("recovered")).count();
    let lookups: u64 = TENANTS
        .iter()
        .map(|t| {
            let c = sim.state("hubspot", t)["counters"].clone();
            c.as_object().map_or(0, |m| m.iter().filter(|(k, _)| k.starts_with("GET /hubspot/crm/v3/objects/calls/")).flat_map(|(_, v)| v.as_object().unwrap().values().map(|n| n.as_u64().unwrap_or(0))).sum())
        })
        .sum();
    assert!(lookups > 0, "the kills orphaned claims, and they were recovered by lookup");
    eprintln!(
        "{KILLS} SIGKILLs: {} calls, {live} records, 0 doubled, 0 dead letters; {lookups} lookups by key after expired leases, {recovered} found the record, {met_own_key} creates met their own key",
        inputs.len()
    );
}
