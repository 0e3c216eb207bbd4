//! The HubSpot writer as a separate process, against the dev broker, the machine's Redis and
//! crm-sim: each test asserts what crm-sim holds afterwards (records per idempotency key,
//! their properties, associations, 429 counts) and what reached the audit topic and the DLQ.

use crm_common::codec;
use crm_common::events::*;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::writer::{block_bucket, wait_for};
use crm_sync_tests::{normalised_call, Broker, Proc, RedisPrefix, TempFile, MACHINE_REDIS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const TOKEN: &str = "tok-acme-hubspot";

fn hubspot_account(sim: &CrmSim, account: &str, extra: Value) {
    let mut spec = json!({
        "crm": "hubspot", "account": account, "plan": "professional",
        "tokens": [{"token": format!("tok-{account}-hubspot"), "kind": "static", "app": "crm-sync"}],
        "fields": {"calls": {"crm_sync_key": {"type": "text", "unique": true}}},
        "key_field": {"object": "calls", "field": "crm_sync_key"},
        "search_lag_ms": 0,
        "objects": {"contacts": [{"firstname": "Ada", "lastname": "Lovelace", "phone": "(415) 555-2671"}]}
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    sim.account(spec);
}

fn tenants(sim: &CrmSim, ids: &[&str], limits: &str) -> TempFile {
    let body: String = ids
        .iter()
        .map(|t| {
            format!(
                "[tenants.{t}]\ndefault_region = \"US\"\n[tenants.{t}.crms.hubspot]\nplan = \"professional\"\n\
                 credentials_secret = \"{}_HUBSPOT_TOKEN\"\nbase_url = \"{}/hubspot\"\n{limits}\n",
                t.to_uppercase(),
                sim.url
            )
        })
        .collect();
    TempFile::new("tenants.toml", &body)
}

fn request(tenant: &str, call: &str, version: i64) -> (String, Vec<u8>, Vec<(String, String)>) {
    request_to(tenant, call, version, "+14155552671")
}

/// A write request for a call with the customer on `customer`.
fn request_to(tenant: &str, call: &str, version: i64, customer: &str) -> (String, Vec<u8>, Vec<(String, String)>) {
    let mut c = normalised_call(tenant, call, version);
    c.customer_e164 = customer.into();
    let r = CrmWriteRequest {
        tenant_id: tenant.into(),
        call_id: call.into(),
        crm: Crm::Hubspot,
        idempotency_key: idempotency_key(tenant, call, Crm::Hubspot),
        version,
        call: c,
        requested_at: 0,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    };
    (tenant.into(), codec::encode(&r).unwrap(), vec![])
}

fn writer(broker: &Broker, tenants: &TempFile, prefix: &RedisPrefix, extra: &[(&str, &str)]) -> Proc {
    let mut env = vec![("ACME_HUBSPOT_TOKEN", TOKEN), ("GLOBEX_HUBSPOT_TOKEN", "tok-globex-hubspot")];
    env.extend_from_slice(extra);
    crm_sync_tests::writer::spawn(broker, "hubspot", tenants, prefix, &env)
}

/// Audit records of operation "write" (one per input, final), and DLQ entries.
fn outcomes(broker: &Broker, inputs: usize, timeout: Duration) -> (Vec<AuditRecord>, Vec<DeadLetter>, Vec<AuditRecord>) {
    let reader = broker.reader(&["sync.audit", "sync.dlq"]);
    let (mut finals, mut dlq, mut all) = (vec![], vec![], vec![]);
    let deadline = Instant::now() + timeout;
    while finals.len() < inputs && Instant::now() < deadline {
        for m in reader.read_until(Duration::from_millis(500), |b| b.len() >= 1000) {
            let p = m.payload.as_deref().unwrap();
            if m.topic == "sync.dlq" {
                dlq.push(codec::decode::<DeadLetter>(p).unwrap());
            } else {
                let a: AuditRecord = codec::decode(p).unwrap();
                if a.operation == "write" {
                    finals.push(a.clone());
                }
                all.push(a);
            }
        }
    }
    (finals, dlq, all)
}

fn keys(sim: &CrmSim, account: &str) -> HashMap<String, (u64, u64)> {
    sim.state("hubspot", account)["keys"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, (v["total"].as_u64().unwrap(), v["live"].as_u64().unwrap())))
        .collect()
}

#[test]
fn one_record_per_call_under_duplicates_and_updates() {
    let broker = Broker::start(2);
    let sim = CrmSim::start();
    hubspot_account(&sim, "acme", json!({}));
    let tenants = tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    let w = writer(&broker, &tenants, &prefix, &[]);

    let mut inputs: Vec<_> = (0..30).map(|i| request("acme", &format!("c{i}"), 1)).collect();
    inputs.extend((0..10).map(|i| request("acme", &format!("c{i}"), 1)));
    inputs.push(request("acme", "c0", 2));
    broker.produce("crm.writes.hubspot", &inputs);
    let (finals, dlq, all) = outcomes(&broker, inputs.len(), Duration::from_secs(60));
    assert_eq!(finals.len(), inputs.len(), "every input gets a final audit record");
    assert!(dlq.is_empty(), "{dlq:?}");

    let k = keys(&sim, "acme");
    assert_eq!(k.len(), 30, "{k:?}");
    assert!(k.values().all(|&(total, live)| total == 1 && live == 1), "exactly one record per call: {k:?}");
    let records = sim.records("hubspot", "acme", "calls");
    let c0 = records.iter().find(|r| r["fields"]["crm_sync_key"] == "acme:c0:hubspot").expect("c0");
    assert_eq!(c0["fields"]["hs_call_status"], "COMPLETED", "the update reached HubSpot: {c0}");
    assert_eq!(c0["fields"]["hs_call_duration"], "60000");
    let c5 = records.iter().find(|r| r["fields"]["crm_sync_key"] == "acme:c5:hubspot").expect("c5");
    assert_eq!(c5["fields"]["hs_call_status"], "IN_PROGRESS");
    assert_eq!(c5["fields"]["hs_call_title"], "Inbound call from +14155552671");
    let contact = sim.records("hubspot", "acme", "contacts")[0]["id"].as_str().unwrap().to_string();
    assert!(c5["associations"].as_array().is_some_and(|a| a.iter().any(|x| x == &json!(contact))), "associated with the contact matched by phone: {c5}");

    let written = finals.iter().filter(|a| a.outcome == AuditOutcome::Succeeded).count();
    let skipped = finals.iter().filter(|a| matches!(a.outcome, AuditOutcome::Duplicate | AuditOutcome::Skipped)).count();
    assert_eq!(written + skipped, inputs.len());
    // 30 creates, and the update unless c0 v1 and v2 met in one batch (then v2 is created).
    assert!(written >= 30, "{written}");
    assert!(finals.iter().filter(|a| a.outcome == AuditOutcome::Succeeded).all(|a| a.crm_record_id.is_some()));
    // One audit record per CRM call, with status, latency and no unmasked numbers.
    let calls: Vec<&AuditRecord> = all.iter().filter(|a| a.operation.contains("/crm/v3/")).collect();
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|a| a.crm_status.is_some() && a.latency_ms.is_some()));
    assert!(all.iter().all(|a| !format!("{a:?}").contains("4155552671")), "numbers are masked in audit");
    assert!(all.iter().all(|a| !format!("{a:?}").contains(TOKEN)), "the token never reaches audit");
    assert_eq!(sim.count("hubspot", "acme", "POST /hubspot/crm/v3/objects/calls/batch/create", 429), 0);

    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("writer-hubspot", "crm.writes.hubspot") == inputs.len() as i64);
    assert!(w.terminate().success());
}

#[test]
fn permanent_errors_go_to_the_dlq_with_their_reason_and_are_committed() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    hubspot_account(&sim, "acme", json!({}));
    hubspot_account(&sim, "globex", json!({}));
    let tenants = tenants(&sim, &["acme", "globex", "lost"], "");
    let prefix = RedisPrefix::new("writer");
    let w = writer(&broker, &tenants, &prefix, &[]);

    // 1. A contact matched and cached, then deleted in HubSpot: the next call to that
    //    number cannot be associated.
    broker.produce("crm.writes.hubspot", &[request("acme", "a1", 1)]);
    let (f, _, _) = outcomes(&broker, 1, Duration::from_secs(60));
    assert_eq!(f[0].outcome, AuditOutcome::Succeeded);
    let contact = sim.records("hubspot", "acme", "contacts")[0]["id"].as_str().unwrap().to_string();
    sim.admin("DELETE", &format!("/accounts/hubspot/acme/objects/contacts/{contact}"), None);
    // 2. globex's portal loses the key property; 3. "lost" has no token in the environment.
    sim.admin("DELETE", "/accounts/hubspot/globex/fields/calls/crm_sync_key", None);
    broker.produce("crm.writes.hubspot", &[request("acme", "a2", 1), request("globex", "g1", 1), request("lost", "l1", 1)]);
    // 4. acme's app loses its scopes.
    let (_, dlq, _) = outcomes(&broker, 4, Duration::from_secs(60));
    sim.admin("POST", "/accounts/hubspot/acme/permissions/crm.objects.contacts.write/revoke", None);
    broker.produce("crm.writes.hubspot", &[request("acme", "a3", 1)]);
    let (finals, dlq2, _) = outcomes(&broker, 5, Duration::from_secs(60));
    let dlq: Vec<DeadLetter> = dlq.into_iter().chain(dlq2).collect();
    let mut reasons: HashMap<String, (DlqReason, String)> = HashMap::new();
    for d in &dlq {
        reasons.insert(d.call_id.clone().unwrap(), (d.reason, d.detail.clone()));
    }
    assert_eq!(reasons["a2"].0, DlqReason::ContactDeleted, "{:?}", reasons["a2"]);
    assert_eq!(reasons["g1"].0, DlqReason::FieldRemoved, "{:?}", reasons["g1"]);
    assert_eq!(reasons["l1"].0, DlqReason::AuthFailed, "{:?}", reasons["l1"]);
    assert!(reasons["l1"].1.contains("LOST_HUBSPOT_TOKEN"), "names the secret, never a value: {:?}", reasons["l1"]);
    assert_eq!(reasons["a3"].0, DlqReason::PermissionDenied, "{:?}", reasons["a3"]);
    let a2 = dlq.iter().find(|d| d.call_id.as_deref() == Some("a2")).unwrap();
    assert_eq!(a2.crm, Some(Crm::Hubspot));
    assert!(a2.crm_status.is_some() && a2.crm_response_excerpt.is_some(), "the CRM's answer is kept: {a2:?}");
    assert_eq!(finals.iter().filter(|a| a.outcome == AuditOutcome::DeadLettered).count(), 4);
    assert_eq!(keys(&sim, "acme").len(), 1, "nothing written for the failures");
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("writer-hubspot", "crm.writes.hubspot") == 5);
    assert!(w.terminate().success());
}

#[test]
fn injected_throttles_server_errors_and_timeouts_still_give_one_record_each() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    hubspot_account(&sim, "acme", json!({}));
    let tenants = tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    let ep = "batch/create";
    sim.fault("hubspot", "acme", json!({"kind": "429", "count": 2, "endpoint": ep}));
    sim.fault("hubspot", "acme", json!({"kind": "503", "count": 2, "endpoint": ep}));
    // Applied, then answered with a failure: the retry meets its own key.
    sim.fault("hubspot", "acme", json!({"kind": "502", "count": 2, "endpoint": ep, "after_write": true}));
    sim.fault("hubspot", "acme", json!({"kind": "timeout", "count": 1, "endpoint": ep, "after_write": true, "latency_ms": 5000}));
    let w = writer(&broker, &tenants, &prefix, &[("WRITER_HTTP_TIMEOUT", "1s"), ("WRITER_RETRY_BASE", "50ms")]);
    let mut inputs = vec![];
    for round in 0..4 {
        inputs.extend((0..10).map(|i| request("acme", &format!("c{}", round * 10 + i), 1)));
    }
    for chunk in inputs.chunks(10) {
        broker.produce("crm.writes.hubspot", chunk);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (finals, dlq, all) = outcomes(&broker, inputs.len(), Duration::from_secs(90));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(finals.len(), 40);
    let k = keys(&sim, "acme");
    assert_eq!(k.len(), 40);
    assert!(k.values().all(|&(t, l)| t == 1 && l == 1), "{k:?}");
    let state = sim.state("hubspot", "acme");
    let create = &state["counters"]["POST /hubspot/crm/v3/objects/calls/batch/create"];
    for status in ["429", "503", "502", "504"] {
        assert!(create[status].as_u64().unwrap_or(0) >= 1, "fault {status} fired: {create}");
    }
    let throttled = all.iter().filter(|a| a.outcome == AuditOutcome::Throttled).count();
    let retried = all.iter().filter(|a| a.outcome == AuditOutcome::Retrying).count();
    assert!(throttled >= 2 && retried >= 4, "every failed call is audited: {throttled} throttled, {retried} retried");
    assert!(w.terminate().success());
}

#[test]
fn a_tenant_waiting_for_tokens_does_not_delay_another_on_the_same_partition() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    hubspot_account(&sim, "acme", json!({}));
    hubspot_account(&sim, "globex", json!({}));
    let tenants = tenants(&sim, &["acme", "globex"], "");
    let prefix = RedisPrefix::new("writer");
    // acme's bucket is blocked (as after a 429 whose reset is far off).
    block_bucket(&prefix, "acme", "hubspot", Duration::from_secs(30));
    let w = writer(&broker, &tenants, &prefix, &[]);
    let mut inputs: Vec<_> = (0..5).map(|i| request("acme", &format!("a{i}"), 1)).collect();
    inputs.extend((0..5).map(|i| request("globex", &format!("g{i}"), 1)));
    broker.produce("crm.writes.hubspot", &inputs);
    let started = Instant::now();
    wait_for("globex's calls", Duration::from_secs(20), || keys(&sim, "globex").len() == 5);
    let globex_took = started.elapsed();
    assert!(keys(&sim, "acme").is_empty(), "acme waits for its bucket");
    // Only the waiting tenant's offsets hold the partition's commit back.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(broker.committed("writer-hubspot", "crm.writes.hubspot"), 0, "acme's unfinished inputs come first in the partition");
    // The block ends: acme's calls go out and everything is committed.
    redis::Client::open(MACHINE_REDIS).unwrap().get_connection().and_then(|mut c| redis::cmd("DEL").arg(format!("{}:{{acme}}:bucket:hubspot:blocked", prefix.0)).query::<i64>(&mut c)).unwrap();
    wait_for("acme's calls", Duration::from_secs(20), || keys(&sim, "acme").len() == 5);
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("writer-hubspot", "crm.writes.hubspot") == 10);
    eprintln!("globex written {globex_took:?} after produce while acme was blocked");
    assert!(w.terminate().success());
}

#[test]
fn two_replicas_sharing_a_tenants_bucket_never_exceed_its_limit() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    // The plan's limits, lowered so the test is short; the tenant config says the same.
    hubspot_account(&sim, "acme", json!({"limits": {"burst_per_10s": 15, "search_per_s": 5}, "objects": {}}));
    let tenants = tenants(&sim, &["acme"], "on_no_contact = \"create_contact\"\nlimits = { burst_per_10s = 15, search_per_s = 5 }");
    let prefix = RedisPrefix::new("writer");
    // Two replicas in separate groups both see every call: claims keep the writes single
    // while both spend from acme's one bucket (contact searches, creates, batches).
    let a = writer(&broker, &tenants, &prefix, &[("CONSUMER_GROUP", "writer-a")]);
    let b = writer(&broker, &tenants, &prefix, &[("CONSUMER_GROUP", "writer-b")]);
    let inputs: Vec<_> = (0..25).map(|i| request_to("acme", &format!("c{i}"), 1, &format!("+1650253{i:04}"))).collect();
    broker.produce("crm.writes.hubspot", &inputs);
    let started = Instant::now();
    wait_for("every call written", Duration::from_secs(120), || keys(&sim, "acme").len() == 25);
    let took = started.elapsed();
    let k = keys(&sim, "acme");
    assert!(k.values().all(|&(t, l)| t == 1 && l == 1), "{k:?}");
    let state = sim.state("hubspot", "acme");
    let throttled: u64 = state["counters"].as_object().unwrap().values().map(|c| c["429"].as_u64().unwrap_or(0)).sum();
    let requests: u64 = state["counters"].as_object().unwrap().values().flat_map(|c| c.as_object().unwrap().values().map(|n| n.as_u64().unwrap_or(0))).sum();
    assert_eq!(throttled, 0, "the shared bucket kept both replicas inside the limit: {}", state["counters"]);
    assert_eq!(sim.records("hubspot", "acme", "contacts").len(), 25, "one contact created per new number");
    eprintln!("2 replicas: {requests} requests, 0 throttled, 25 calls in {took:?} at 15 per 10 s");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn oauth_tokens_are_refreshed_and_a_failed_refresh_is_auth_failed() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    hubspot_account(&sim, "acme", json!({"tokens": [{
        "token": "hs-access-1", "kind": "oauth", "refresh_token": "hs-refresh-1",
        "client_id": "crm-sync-app", "client_secret": "app-secret", "expires_in_s": 1800
    }]}));
    let tenants = tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    let secret = r#"{"client_id": "crm-sync-app", "client_secret": "app-secret", "refresh_token": "hs-refresh-1"}"#;
    let w = writer(&broker, &tenants, &prefix, &[("ACME_HUBSPOT_TOKEN", secret)]);
    broker.produce("crm.writes.hubspot", &[request("acme", "o1", 1)]);
    let (f, _, all) = outcomes(&broker, 1, Duration::from_secs(60));
    assert_eq!(f[0].outcome, AuditOutcome::Succeeded, "{f:?}");
    assert!(all.iter().any(|a| a.operation == "POST /hubspot/oauth/v1/token" && a.outcome == AuditOutcome::Succeeded), "the writer refreshed first");

    // HubSpot's clock passes the access token's expiry: a 401, one refresh, then success.
    sim.advance(3_600_000);
    broker.produce("crm.writes.hubspot", &[request("acme", "o2", 1)]);
    let (f, dlq, _) = outcomes(&broker, 2, Duration::from_secs(60));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(f.iter().filter(|a| a.outcome == AuditOutcome::Succeeded).count(), 2, "{f:?}");
    assert!(sim.count("hubspot", "acme", "POST /hubspot/crm/v3/objects/calls/batch/create", 401) >= 1, "the expired token was refused once");

    // The refresh token is revoked and the access token expires: AUTH_FAILED, no retry loop.
    sim.admin("POST", "/tokens/hs-refresh-1/revoke", None);
    sim.advance(3_600_000);
    broker.produce("crm.writes.hubspot", &[request("acme", "o3", 1)]);
    let (f, dlq, all) = outcomes(&broker, 3, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1, "{f:?}");
    assert_eq!(dlq[0].reason, DlqReason::AuthFailed);
    assert!(dlq[0].detail.contains("token refresh failed"), "{}", dlq[0].detail);
    for a in &all {
        let text = format!("{a:?}");
        assert!(!text.contains("hs-access") && !text.contains("hs-refresh") && !text.contains("app-secret"), "a credential reached audit: {text}");
    }
    assert!(w.terminate().success());
}

#[test]
fn transient_failures_past_the_retry_limit_are_dead_lettered_as_retries_exhausted() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    hubspot_account(&sim, "acme", json!({}));
    let tenants = tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    sim.fault("hubspot", "acme", json!({"kind": "503", "endpoint": "batch/create"}));
    let w = writer(&broker, &tenants, &prefix, &[("WRITER_RETRY_LIMIT", "2s"), ("WRITER_RETRY_BASE", "50ms"), ("WRITER_RETRY_MAX_WAIT", "300ms")]);
    broker.produce("crm.writes.hubspot", &[request("acme", "r1", 1)]);
    let (f, dlq, all) = outcomes(&broker, 1, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1, "{f:?}");
    assert_eq!(dlq[0].reason, DlqReason::RetriesExhausted);
    assert_eq!(dlq[0].crm_status, Some(503));
    assert!(dlq[0].attempt > 2, "retried before giving up: {}", dlq[0].attempt);
    let retries = all.iter().filter(|a| a.outcome == AuditOutcome::Retrying).count();
    assert!(retries >= 2, "each retry is audited: {retries}");
    // Replayable: the claim was released, so the key is free once HubSpot recovers.
    sim.admin("DELETE", "/accounts/hubspot/acme/faults", None);
    broker.produce("crm.writes.hubspot", &[request("acme", "r1", 1)]);
    let (f, _, _) = outcomes(&broker, 2, Duration::from_secs(60));
    assert!(f.iter().any(|a| a.outcome == AuditOutcome::Succeeded), "{f:?}");
    assert_eq!(keys(&sim, "acme").len(), 1);
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("writer-hubspot", "crm.writes.hubspot") == 2);
    assert!(w.terminate().success());
}

#[test]
fn a_full_writer_pauses_its_partitions_and_resumes_without_losing_anything() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    hubspot_account(&sim, "acme", json!({}));
    let tenants = tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    block_bucket(&prefix, "acme", "hubspot", Duration::from_secs(4));
    let mut w = writer(&broker, &tenants, &prefix, &[("WRITER_MAX_BUFFERED", "10")]);
    let inputs: Vec<_> = (0..60).map(|i| request("acme", &format!("p{i}"), 1)).collect();
    broker.produce("crm.writes.hubspot", &inputs);
    wait_for("a pause", Duration::from_secs(20), || w.log_text().contains("paused consuming"));
    wait_for("every call", Duration::from_secs(60), || keys(&sim, "acme").len() == 60);
    assert!(w.log_text().contains("resumed consuming"), "{}", w.log_text());
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("writer-hubspot", "crm.writes.hubspot") == 60);
    assert!(w.alive());
    assert!(w.terminate().success());
}

#[test]
fn a_rebalance_to_a_second_replica_loses_nothing_and_writes_nothing_twice() {
    let broker = Broker::start(4);
    let sim = CrmSim::start();
    let names = ["acme", "globex", "initech", "umbrella"];
    for t in names {
        hubspot_account(&sim, t, json!({}));
        // Slow HubSpot a little so work is in flight when the group rebalances.
        sim.fault("hubspot", t, json!({"kind": "latency", "latency_ms": 150, "endpoint": "batch/create"}));
    }
    let tenants = tenants(&sim, &names, "");
    let prefix = RedisPrefix::new("writer");
    let secrets = [("INITECH_HUBSPOT_TOKEN", "tok-initech-hubspot"), ("UMBRELLA_HUBSPOT_TOKEN", "tok-umbrella-hubspot")];
    let a = writer(&broker, &tenants, &prefix, &secrets);
    let inputs: Vec<_> = (0..200).map(|i| request(names[i % 4], &format!("r{i}"), 1)).collect();
    let mut b = None;
    for (n, chunk) in inputs.chunks(8).enumerate() {
        broker.produce("crm.writes.hubspot", chunk);
        if n == 8 {
            // Mid-stream, a second replica joins the group and takes half the partitions.
            b = Some(writer(&broker, &tenants, &prefix, &secrets));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = || names.iter().map(|t| keys(&sim, t).len()).sum::<usize>();
    wait_for("every call", Duration::from_secs(90), || total() == 200);
    for t in names {
        assert!(keys(&sim, t).values().all(|&(n, l)| n == 1 && l == 1), "{t}: {:?}", keys(&sim, t));
    }
    wait_for("offsets committed", Duration::from_secs(30), || broker.committed("writer-hubspot", "crm.writes.hubspot") == 200);
    let log_b = b.as_ref().unwrap().log_text();
    assert!(log_b.contains("partitions assigned"), "the second replica took partitions: {log_b}");
    assert!(a.terminate().success());
    assert!(b.unwrap().terminate().success());
}
