//! The audit store end to end, against the dev broker, the machine's PostgreSQL (a database
//! per test) and Redis, crm-sim and the services as processes: the audit-sink stores a
//! redelivered batch once and keeps what it cannot decode; `crm-sync trace` shows a call's
//! every stage; a dead-lettered write replayed with `crm-sync dlq replay` after its cause is
//! fixed in crm-sim reaches the CRM exactly once.

use crm_common::codec;
use crm_common::events::*;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::writer_suite::{outcomes, HUBSPOT};
use crm_sync_tests::{bin, Broker, PrivateDb, Proc, RedisPrefix};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn sink(broker: &Broker, db: &PrivateDb, group: &str) -> Proc {
    broker.service(
        "audit-sink",
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("CONSUMER_GROUP", group),
            ("PIPELINE_COMMIT_INTERVAL_MS", "100"),
            ("TENANTS_CONFIG", "/dev/null"),
        ],
    )
}

fn audit_record(i: usize) -> AuditRecord {
    AuditRecord {
        audit_id: format!("a-{i}"),
        tenant_id: "acme".into(),
        call_id: Some(format!("c{}", i % 10)),
        crm: Some(Crm::Hubspot),
        stage: Stage::Writer,
        operation: "write".into(),
        outcome: AuditOutcome::Succeeded,
        reason: None,
        detail: format!("created hubspot record {i}"),
        attempt: 1,
        version: Some(1),
        idempotency_key: Some(format!("acme:c{}:hubspot", i % 10)),
        crm_status: Some(201),
        crm_response_excerpt: None,
        crm_record_id: Some(i.to_string()),
        latency_ms: Some(3),
        input_topic: "crm.writes.hubspot".into(),
        input_partition: 0,
        input_offset: i as i64,
        // Across two days, so two partitions are made.
        occurred_at: 1_767_225_600_000 + (i as i64 - 50) * 60_000,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        attributes: [("k".to_string(), "v".to_string())].into(),
        kind: None,
    }
}

fn dead_letter(i: usize) -> DeadLetter {
    DeadLetter {
        dlq_id: format!("d-{i}"),
        tenant_id: "acme".into(),
        call_id: Some(format!("c{i}")),
        crm: None,
        stage: Stage::Normaliser,
        reason: DlqReason::InvalidPhone,
        detail: "from_number \"12\" cannot be made E.164".into(),
        source_topic: "calls.raw".into(),
        source_partition: 0,
        source_offset: i as i64,
        source_key: Some(b"acme".to_vec()),
        payload: vec![1, 2, 3],
        attempt: 1,
        replay_count: 0,
        crm_status: None,
        crm_response_excerpt: None,
        failed_at: 1_767_225_600_000,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        kind: None,
    }
}

#[test]
fn a_redelivered_batch_is_stored_once_and_undecodable_messages_are_kept() {
    let broker = Broker::start(2);
    let db = PrivateDb::new("sink");
    let audit: Vec<_> = (0..100).map(|i| ("acme".to_string(), codec::encode(&audit_record(i)).unwrap(), vec![])).collect();
    let dlq: Vec<_> = (0..5).map(|i| ("acme".to_string(), codec::encode(&dead_letter(i)).unwrap(), vec![])).collect();
    broker.produce("sync.audit", &audit);
    broker.produce("sync.dlq", &dlq);
    broker.produce("sync.audit", &[("acme".to_string(), b"{\"not\": \"avro\"}".to_vec(), vec![])]);
    let s = sink(&broker, &db, "audit-sink");
    assert_eq!(db.wait_count("SELECT count(*) FROM audit", 100, Duration::from_secs(30)), 100);
    assert_eq!(db.wait_count("SELECT count(*) FROM dlq", 5, Duration::from_secs(10)), 5);
    assert_eq!(db.wait_count("SELECT count(*) FROM sink_rejects", 1, Duration::from_secs(10)), 1);
    let reject = &db.query("SELECT error FROM sink_rejects")[0];
    assert!(reject.get::<_, String>(0).contains("not an AuditRecord"), "the reason is kept");
    wait_for("offsets committed after the database commit", Duration::from_secs(20), || {
        broker.committed("audit-sink", "sync.audit") == 101
    });
    assert!(s.terminate().success());

    // Everything again (a crash before the commit, a replayed topic): stored once.
    broker.produce("sync.audit", &audit[..40]);
    let again = sink(&broker, &db, "audit-sink-2");
    wait_for("the second sink to read it all", Duration::from_secs(30), || broker.committed("audit-sink-2", "sync.audit") == 141);
    wait_for("the second sink to read the DLQ", Duration::from_secs(30), || broker.committed("audit-sink-2", "sync.dlq") == 5);
    assert_eq!(db.count("SELECT count(*) FROM audit"), 100, "a redelivered record is stored once");
    assert_eq!(db.count("SELECT count(*) FROM dlq"), 5);
    assert_eq!(db.count("SELECT count(*) FROM sink_rejects"), 1);
    let parts = db.count("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit'");
    assert_eq!(parts, 2, "one partition per day");
    let row = &db.query("SELECT attributes->>'k', crm_record_id, outcome FROM audit WHERE audit_id = 'a-7'")[0];
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)), ("v".into(), "7".into(), "SUCCEEDED".into()));
    assert!(again.terminate().success());
}

/// Whether `word` stands alone in `text`: an id like `c2` is not found inside a trace id's hex
/// (`4c2d86…`), which a plain `contains` would (a test failed so, one run in ten).
fn names(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == word)
}

fn crm_sync(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(bin("crm-sync")).args(args).envs(env.iter().copied()).output().expect("crm-sync");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_calls_trace_shows_every_stage_from_raw_to_the_crm_record() {
    let broker = Broker::start(1);
    let db = PrivateDb::new("trace");
    let sim = CrmSim::start();
    HUBSPOT.account(&sim, "acme", json!({}));
    let tenants = HUBSPOT.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("trace");
    let common =
        [("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", crm_sync_tests::MACHINE_REDIS), ("REDIS_KEY_PREFIX", prefix.0.as_str())];
    let n = broker.service("normaliser", &common);
    let d = broker.service("deduper", &common);
    let w = HUBSPOT.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    let s = sink(&broker, &db, "audit-sink");
    broker.produce(
        "calls.raw",
        &[("acme".into(), codec::encode(&crm_common::events::fixtures::raw_call("acme", "call-77", 0)).unwrap(), vec![])],
    );
    let written = db.wait_count(
        "SELECT count(*) FROM audit WHERE call_id = 'call-77' AND stage = 'WRITER' AND operation = 'write'",
        1,
        Duration::from_secs(60),
    );
    assert_eq!(written, 1, "the write reached the audit store");
    let env = [("DATABASE_URL", db.url.as_str())];
    let (ok, text, err) = crm_sync(&["trace", "call-77"], &env);
    assert!(ok, "{err}");
    for expected in
        ["NORMALISER", "DEDUPER", "WRITER", "POST /crm/v3/objects/calls/batch/create → 201", "Outcome: hubspot: in the CRM as record"]
    {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    eprintln!("{text}");
    let record = HUBSPOT.keys(&sim, "acme");
    assert_eq!(record.len(), 1);
    let id = sim.records("hubspot", "acme", "calls")[0]["id"].as_str().unwrap().to_string();
    assert!(text.contains(&format!("record {id}")), "the CRM's record id: {text}");
    assert!(!text.contains("4155552671"), "numbers stay masked: {text}");
    let (ok, json, _) = crm_sync(&["trace", "call-77", "--tenant", "acme", "--json"], &env);
    assert!(ok);
    let steps: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(steps.len() >= 4, "{json}");
    assert!(steps.windows(2).all(|w| w[0]["at"].as_str() <= w[1]["at"].as_str()), "in time order");
    let (ok, none, _) = crm_sync(&["trace", "no-such-call"], &env);
    assert!(!ok && none.contains("No record of activity no-such-call"), "{none}");
    for p in [n, d, w, s] {
        assert!(p.terminate().success());
    }
}

#[test]
fn a_replayed_dlq_entry_is_written_once_after_its_cause_is_fixed() {
    let broker = Broker::start(1);
    let db = PrivateDb::new("replay");
    let sim = CrmSim::start();
    HUBSPOT.account(&sim, "acme", json!({}));
    let tenants = HUBSPOT.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("replay");
    // The portal lost the scope to write calls: both writes are dead-lettered.
    sim.admin("POST", "/accounts/hubspot/acme/permissions/crm.objects.contacts.write/revoke", None);
    let w = HUBSPOT.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    let s = sink(&broker, &db, "audit-sink");
    broker.produce("crm.writes.hubspot", &[HUBSPOT.request("acme", "r1", 1), HUBSPOT.request("acme", "r2", 1)]);
    assert_eq!(db.wait_count("SELECT count(*) FROM dlq WHERE reason = 'PERMISSION_DENIED'", 2, Duration::from_secs(60)), 2);
    let env = [("DATABASE_URL", db.url.as_str()), ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.as_str()), ("USER", "support-jane")];
    let (ok, list, err) = crm_sync(&["dlq", "list", "--reason", "permission_denied", "--tenant", "acme"], &env);
    assert!(ok, "{err}");
    assert!(list.contains("PERMISSION_DENIED") && list.contains("open") && list.contains("(2 entries)"), "{list}");
    let ids: Vec<String> = db.query("SELECT dlq_id FROM dlq WHERE call_id = 'r1'").iter().map(|r| r.get(0)).collect();
    let other: String = db.query("SELECT dlq_id FROM dlq WHERE call_id = 'r2'")[0].get(0);
    let (ok, show, _) = crm_sync(&["dlq", "show", &ids[0]], &env);
    assert!(ok && show.contains("\"idempotency_key\": \"acme:r1:hubspot\"") && show.contains("403"), "{show}");

    // A dry run sends nothing.
    let (ok, dry, _) = crm_sync(&["dlq", "replay", &ids[0], "--dry-run"], &env);
    assert!(ok && dry.contains("would replay 1 entries"), "{dry}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(HUBSPOT.keys(&sim, "acme").is_empty());

    // The scope is granted again; the entry is replayed: one record.
    sim.admin("POST", "/accounts/hubspot/acme/permissions/crm.objects.contacts.write/grant", None);
    let (ok, out, err) = crm_sync(&["dlq", "replay", &ids[0]], &env);
    assert!(ok && out.contains("replayed 1 entries"), "{out}{err}");
    wait_for("the replayed call in HubSpot", Duration::from_secs(30), || HUBSPOT.keys(&sim, "acme").len() == 1);
    assert_eq!(db.count("SELECT count(*) FROM dlq WHERE state = 'replayed' AND replay_count = 1"), 1);
    // Replayed again by mistake: idempotency keeps one record; a third time is a loop.
    let (ok, _, _) = crm_sync(&["dlq", "replay", &ids[0], "--max-replays", "2"], &env);
    assert!(ok);
    let (ok, out, err) = crm_sync(&["dlq", "replay", &ids[0], "--max-replays", "2"], &env);
    assert!(ok && out.contains("replayed 0 entries; 1 refused") && err.contains("replayed 2 times already"), "{out}{err}");
    let (finals, _, all) = outcomes(&broker, 4, Duration::from_secs(30));
    assert!(
        finals.iter().any(|a| a.call_id.as_deref() == Some("r1") && a.outcome == AuditOutcome::Duplicate),
        "the second replay was a duplicate"
    );
    let k = HUBSPOT.keys(&sim, "acme");
    assert!(k.len() == 1 && k.values().all(|&(t, _)| t == 1), "exactly one record after two replays: {k:?}");

    // The other entry is expected (the tenant asked for it): acknowledged with a note.
    let (ok, _, err) = crm_sync(&["dlq", "ack", &other, "--note", "tenant removed the app on purpose"], &env);
    assert!(ok, "{err}");
    let (_, list, _) = crm_sync(&["dlq", "list", "--state", "acknowledged"], &env);
    assert!(list.contains(&other) && list.contains("(1 entries)"), "{list}");
    // Every action is audited, by whom.
    let ops: Vec<&AuditRecord> = all.iter().filter(|a| a.stage == Stage::Operator).collect();
    assert!(ops.iter().filter(|a| a.operation == "dlq replay").count() >= 2, "{ops:?}");
    wait_for("the ack's audit record", Duration::from_secs(20), || {
        db.count("SELECT count(*) FROM audit WHERE stage = 'OPERATOR' AND operation = 'dlq ack'") == 1
    });
    let by: String = db.query("SELECT attributes->>'by' FROM audit WHERE stage = 'OPERATOR' LIMIT 1")[0].get(0);
    assert_eq!(by, "support-jane");
    for p in [w, s] {
        assert!(p.terminate().success());
    }
}

/// An email's path: the audit store keeps its kind, `crm-sync trace` finds it by its
/// Message-ID (brackets or not) and calls it an email; a refused one is in the DLQ as an
/// email with its reason.
#[test]
fn an_emails_trace_and_dead_letter_name_its_kind() {
    let broker = Broker::start(1);
    let db = PrivateDb::new("trace_email");
    let tenants = crm_sync_tests::TempFile::new(
        "tenants.toml",
        "[tenants.acme]\ndefault_region = \"US\"\n[tenants.acme.crms.hubspot]\nplan = \"starter\"\ncredentials_secret = \"X\"\nactivities = [\"call\", \"email\"]\n",
    );
    let prefix = RedisPrefix::new("trace-email");
    let common =
        [("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", crm_sync_tests::MACHINE_REDIS), ("REDIS_KEY_PREFIX", prefix.0.as_str())];
    let n = broker.service("normaliser", &common);
    let d = broker.service("deduper", &common);
    let s = sink(&broker, &db, "audit-sink");
    let good = fixtures::raw_email("acme", "m77", 0);
    let mut bad = fixtures::raw_email("acme", "m78", 1);
    bad.cc = vec!["not an address".into()];
    broker.produce("emails.raw", &[good, bad].map(|e| ("acme".to_string(), codec::encode(&e).unwrap(), vec![])));
    let stored = db.wait_count(
        "SELECT count(*) FROM audit WHERE kind = 'email' AND call_id IN ('m77@mail.acme.example', 'm78@mail.acme.example')",
        3,
        Duration::from_secs(60),
    );
    assert_eq!(stored, 3, "normalised, deduped for hubspot, and the refused one");
    let dead = db.wait_count(
        "SELECT count(*) FROM dlq WHERE kind = 'email' AND reason = 'VALIDATION' AND call_id = 'm78@mail.acme.example'",
        1,
        Duration::from_secs(30),
    );
    assert_eq!(dead, 1);
    let env = [("DATABASE_URL", db.url.as_str())];
    let (ok, text, err) = crm_sync(&["trace", "<m77@mail.acme.example>"], &env);
    assert!(ok, "{err}");
    assert!(text.starts_with("Email m77@mail.acme.example (tenant acme)"), "{text}");
    for expected in ["NORMALISER", "DEDUPER", "new email"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // A backfill of emails.raw re-sends both; the deduper lets the good one past its mark.
    let env = [("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.as_str()), ("TENANTS_CONFIG", tenants.path())];
    let (ok, out, err) = crm_sync(&["backfill", "--tenant", "acme", "--kind", "email", "--from", "1h", "--quiet"], &env);
    assert!(ok && out.contains("re-sent 2 emails"), "{out}{err}");
    let again = db.wait_count(
        "SELECT count(*) FROM audit WHERE kind = 'email' AND stage = 'DEDUPER' AND call_id = 'm77@mail.acme.example' AND attributes ? 'backfill'",
        1,
        Duration::from_secs(60),
    );
    assert_eq!(again, 1, "the backfilled email reached the deduper marked as a backfill");
    for p in [n, d, s] {
        assert!(p.terminate().success());
    }
}

/// Tests poll the audit store while the audit-sink starts: until the sink has created the
/// table, a count is 0, not a failure (a reconciler test failed in CI on exactly that).
#[test]
fn a_count_before_the_sink_has_created_the_table_is_zero() {
    let db = PrivateDb::new("early");
    assert_eq!(db.count("SELECT count(*) FROM audit WHERE stage = 'WRITER'"), 0);
    db.query("CREATE TABLE audit (stage text)");
    db.query("INSERT INTO audit VALUES ('WRITER')");
    assert_eq!(db.count("SELECT count(*) FROM audit WHERE stage = 'WRITER'"), 1);
    let other = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.count("SELECT count(*) FROM audit WHERE nonesuch = 1")));
    assert!(other.is_err(), "any other error still fails the test");
}

/// The DLQ's review queue as gauges: open entries per CRM and reason and the age of the
/// oldest, falling as entries are acknowledged or replayed, and a reason whose last entry was
/// reviewed kept at 0 (what `CrmSyncDlqUnreviewed` and the dashboard read).
#[test]
fn open_dead_letters_are_gauged_by_crm_and_reason_until_reviewed() {
    let broker = Broker::start(1);
    let db = PrivateDb::new("review");
    let collector = crm_sync_tests::otlp::Collector::start();
    let now = crm_common::clock::now_ms();
    let two_hours_ago = DeadLetter { failed_at: now - 2 * 3_600_000, ..dead_letter(1) };
    let later = DeadLetter { failed_at: now - 60_000, ..dead_letter(2) };
    let refused = DeadLetter {
        crm: Some(Crm::Hubspot),
        stage: Stage::Writer,
        reason: DlqReason::PermissionDenied,
        failed_at: now - 30_000,
        ..dead_letter(3)
    };
    let dlq: Vec<_> = [&two_hours_ago, &later, &refused].iter().map(|d| ("acme".to_string(), codec::encode(*d).unwrap(), vec![])).collect();
    broker.produce("sync.dlq", &dlq);
    let mut env: Vec<(&str, String)> = collector.env();
    env.extend([
        ("DATABASE_URL", db.url.clone()),
        ("CONSUMER_GROUP", "audit-sink".into()),
        ("TENANTS_CONFIG", "/dev/null".into()),
        ("DLQ_REVIEW_INTERVAL", "300ms".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = broker.service("audit-sink", &env);
    assert_eq!(db.wait_count("SELECT count(*) FROM dlq", 3, Duration::from_secs(30)), 3);
    // The latest figure the sink exported for (metric, crm, reason).
    let latest = |metric: &str, crm: &str, reason: &str| {
        collector
            .points()
            .into_iter()
            .filter(|p| {
                p.service == "audit-sink"
                    && p.metric == metric
                    && p.attributes.get("crm").map(String::as_str) == Some(crm)
                    && p.attributes.get("reason").map(String::as_str) == Some(reason)
            })
            .filter_map(|p| p.value)
            .next_back()
    };
    wait_for("both reasons gauged", Duration::from_secs(20), || {
        latest("crm_sync.dlq.open", "none", "INVALID_PHONE") == Some(2.0)
            && latest("crm_sync.dlq.open", "hubspot", "PERMISSION_DENIED") == Some(1.0)
    });
    let age = latest("crm_sync.dlq.open.oldest_age", "none", "INVALID_PHONE").unwrap();
    assert!((7200.0..7300.0).contains(&age), "the oldest open INVALID_PHONE entry waited two hours: {age}");
    let age = latest("crm_sync.dlq.open.oldest_age", "hubspot", "PERMISSION_DENIED").unwrap();
    assert!((30.0..120.0).contains(&age), "{age}");

    // The oldest is acknowledged: one left, and the age is the next one's.
    let cli_env = [("DATABASE_URL", db.url.as_str()), ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.as_str())];
    let (ok, _, err) = crm_sync(&["dlq", "ack", "d-1", "--note", "test number"], &cli_env);
    assert!(ok, "{err}");
    wait_for("one INVALID_PHONE entry left open", Duration::from_secs(20), || {
        latest("crm_sync.dlq.open", "none", "INVALID_PHONE") == Some(1.0)
    });
    let age = latest("crm_sync.dlq.open.oldest_age", "none", "INVALID_PHONE").unwrap();
    assert!((60.0..180.0).contains(&age), "the next oldest: {age}");
    // The hubspot entry is acknowledged as well: its reason stays, at zero.
    let (ok, _, err) = crm_sync(&["dlq", "ack", "d-3", "--note", "scope removed on purpose"], &cli_env);
    assert!(ok, "{err}");
    wait_for("PERMISSION_DENIED at zero", Duration::from_secs(20), || {
        latest("crm_sync.dlq.open", "hubspot", "PERMISSION_DENIED") == Some(0.0)
            && latest("crm_sync.dlq.open.oldest_age", "hubspot", "PERMISSION_DENIED") == Some(0.0)
    });
    assert_eq!(latest("crm_sync.dlq.open", "none", "INVALID_PHONE"), Some(1.0));
    assert!(s.terminate().success());
}

/// Support finds activities without their id (issue 21): by a customer's number however it
/// is written, by a participant's address, by the agent, in a time range, of one tenant only.
/// The normaliser names each lookup by a keyed hash (the deployment key, a salt per tenant);
/// the audit store holds no number or address in clear, and a different key finds nothing.
#[test]
fn support_finds_activities_by_number_address_agent_and_time() {
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const OTHER_KEY: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=";
    let broker = Broker::start(1);
    let db = PrivateDb::new("find");
    let tenants = crm_sync_tests::TempFile::new(
        "tenants.toml",
        "[tenants.acme]\ndefault_region = \"US\"\n[tenants.acme.crms.hubspot]\nplan = \"starter\"\ncredentials_secret = \"X\"\n\
         activities = [\"call\", \"email\", \"meeting\"]\n[tenants.globex]\ndefault_region = \"US\"\n",
    );
    let n = broker.service("normaliser", &[("TENANTS_CONFIG", tenants.path()), ("CRM_SYNC_TOKEN_KEY", KEY)]);
    let s = sink(&broker, &db, "audit-sink");
    let c1 = fixtures::raw_call("acme", "c1", 0); // (415) 555-2671 calls agent-1
    let c2 = CallEvent { from_number: "+1 212-555-0100".into(), agent_id: "agent-2".into(), ..fixtures::raw_call("acme", "c2", 60) };
    let c3 = fixtures::raw_call("globex", "c3", 0); // the same number, another tenant
                                                    // Refused by the normaliser (a region hint that is no region), and still found.
    let c4 = CallEvent {
        from_number: "+1 415-555-0123".into(),
        region_hint: Some("XX".into()),
        agent_id: "agent-9".into(),
        ..fixtures::raw_call("acme", "c4", 10)
    };
    let email = fixtures::raw_email("acme", "m1", 30); // to jane.doe@customer.example, by rep@acme.example
    let meeting = fixtures::raw_meeting("acme", "e1", 120); // jane.doe@customer.example, dial-in +1 650-253-0000
    let calls: Vec<_> = [c1, c2, c3, c4].iter().map(|c| (c.tenant_id.clone(), codec::encode(c).unwrap(), vec![])).collect();
    broker.produce("calls.raw", &calls);
    broker.produce("emails.raw", &[("acme".to_string(), codec::encode(&email).unwrap(), vec![])]);
    broker.produce("meetings.raw", &[("acme".to_string(), codec::encode(&meeting).unwrap(), vec![])]);
    // A lead from a form: a prospect found by the address and number they typed.
    let lead = LeadEvent {
        email: Some("Lee.Prospect@Prospect.example".into()),
        phone: Some("+44 20 7946 0958".into()),
        ..fixtures::raw_lead("acme", "form-77", 200)
    };
    broker.produce("leads.raw", &[("acme".to_string(), codec::encode(&lead).unwrap(), vec![])]);
    let stored = db.wait_count("SELECT count(DISTINCT activity_id) FROM audit_lookup", 7, Duration::from_secs(60));
    assert_eq!(stored, 7, "every activity and lead is named for lookups, the refused one too");

    let env = [("DATABASE_URL", db.url.as_str()), ("CRM_SYNC_TOKEN_KEY", KEY), ("TENANTS_CONFIG", tenants.path())];
    let trace = |args: &[&str]| crm_sync(&[&["trace"], args].concat(), &env);

    // A number as the customer said it, national in the tenant's region: the one call, traced whole.
    let (ok, text, err) = trace(&["--tenant", "acme", "--phone", "(415) 555-2671"]);
    assert!(ok, "{err}");
    assert!(text.starts_with("1 activity of tenant acme, phone +14•••••••71"), "{text}");
    assert!(text.contains("Call c1 (tenant acme)") && text.contains("NORMALISER"), "{text}");
    assert!(!names(&text, "c3") && !text.contains("4155552671"), "another tenant's call, or the number in clear: {text}");
    let (ok, text, err) = trace(&["--tenant", "globex", "--phone", "+14155552671"]);
    assert!(ok && text.contains("Call c3 (tenant globex)"), "{text}{err}");

    // An address finds the email and the meeting, newest first, a line each.
    let (ok, text, err) = trace(&["--tenant", "acme", "--email", "Jane.Doe@Customer.EXAMPLE"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("2 activities of tenant acme, email"), "{text}");
    assert!(lines[1].contains("2026-01-01 02:00:00") && lines[1].contains("meeting") && lines[1].contains("e1@google.com"), "{text}");
    assert!(lines[2].contains("2026-01-01 00:30:00") && lines[2].contains("email") && lines[2].contains("m1@mail.acme.example"), "{text}");
    assert!(!text.contains("jane.doe"), "the address is masked in the heading: {text}");
    // The meeting's dial-in number is a number it can be found by.
    let (ok, text, _) = trace(&["--tenant", "acme", "--phone", "+16502530000"]);
    assert!(ok && text.contains("Meeting e1@google.com"), "{text}");

    // A lead is found by its email and by its number, like an activity.
    let (ok, text, err) = trace(&["--tenant", "acme", "--email", "lee.prospect@prospect.example"]);
    assert!(ok && text.starts_with("1 activity of tenant acme") && text.contains("Lead form-77 (tenant acme)"), "{text}{err}");
    let (ok, text, _) = trace(&["--tenant", "acme", "--phone", "+442079460958"]);
    assert!(ok && text.contains("Lead form-77"), "{text}");

    // A call the normaliser refused is found by its number: where it stopped, and why.
    let (ok, text, err) = trace(&["--tenant", "acme", "--phone", "+14155550123"]);
    assert!(ok, "{err}");
    assert!(text.contains("Call c4") && text.contains("stopped at the normaliser: VALIDATION"), "{text}");

    // By agent: an id exactly, an address canonically; criteria together must all hold.
    let (ok, text, _) = trace(&["--tenant", "acme", "--agent", "agent-1"]);
    assert!(ok && text.contains("Call c1") && !names(&text, "c2"), "{text}");
    let (ok, text, _) = trace(&["--tenant", "acme", "--agent", "REP@acme.example", "--json"]);
    let found: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = found.iter().map(|f| f["activity"]["activity_id"].as_str().unwrap()).collect();
    assert!(ok && ids == ["e1@google.com", "m1@mail.acme.example"], "{text}");
    assert!(found.iter().all(|f| f["outcome"].as_array().is_some_and(|o| !o.is_empty())), "each with where it ended up: {text}");
    let (ok, _, err) = trace(&["--tenant", "acme", "--agent", "agent-1", "--phone", "+12125550100"]);
    assert!(!ok && err.contains("no activity of tenant acme"), "{err}");

    // A time range: when the activities happened, not when they were normalised.
    let (ok, text, _) = trace(&["--tenant", "acme", "--since", "2026-01-01T00:30:00Z", "--until", "2026-01-01 01:30"]);
    assert!(ok && text.starts_with("2 activities"), "{text}");
    assert!(names(&text, "c2") && text.contains("m1@mail.acme.example") && !text.contains("e1@") && !names(&text, "c1"), "{text}");
    let (ok, text, _) = trace(&["--tenant", "acme", "--since", "2026-01-01", "--limit", "2"]);
    assert!(ok && text.starts_with("2 activities") && text.contains("--limit for more"), "{text}");

    // Searched with another deployment's key, nothing: the names are keyed.
    let other = [("DATABASE_URL", db.url.as_str()), ("CRM_SYNC_TOKEN_KEY", OTHER_KEY)];
    let (ok, _, err) = crm_sync(&["trace", "--tenant", "acme", "--phone", "+14155552671"], &other);
    assert!(!ok && err.contains("CRM_SYNC_TOKEN_KEY"), "{err}");
    // A search needs its tenant.
    let (ok, _, err) = trace(&["--phone", "+14155552671"]);
    assert!(!ok && err.contains("needs --tenant"), "{err}");

    // Nothing in clear in the store: not in the audit rows' attributes, not in the lookups.
    let clear = db.count(
        "SELECT count(*) FROM audit a WHERE a.attributes::text ~ '4155552671|jane\\.doe|6502530000|lee\\.prospect|2079460958' \
         OR EXISTS (SELECT 1 FROM audit_lookup l WHERE l.name ~ '4155552671|jane')",
    );
    assert_eq!(clear, 0);
    for p in [n, s] {
        assert!(p.terminate().success());
    }
}

/// Retention drops whole days of the audit and of its lookups alike: a day past
/// AUDIT_RETENTION leaves no lookup naming an activity whose audit is gone.
#[test]
fn retention_drops_a_days_audit_and_lookups_together() {
    let db = PrivateDb::new("purge");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let now = crm_common::clock::now_ms();
    let old = now - 40 * 86_400_000;
    let normalised = |id: &str, at: i64| {
        let mut r = audit_record(0);
        r.audit_id = format!("a-{id}");
        r.call_id = Some(id.into());
        r.stage = Stage::Normaliser;
        r.occurred_at = at;
        r.attributes = [(crm_common::lookups::ATTRIBUTE.to_string(), format!("{:032x} not-a-name", at))].into();
        r
    };
    let dropped = rt.block_on(async {
        let mut store = crm_common::audit_store::AuditStore::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        store.insert(&[normalised("old", old), normalised("new", now)], &[], &[]).await.unwrap();
        store.purge(Duration::from_secs(30 * 86_400), now).await.unwrap()
    });
    assert_eq!(dropped.len(), 2, "the old day's audit and lookup partitions: {dropped:?}");
    assert!(dropped.iter().any(|d| d.starts_with("audit_lookup_p")), "{dropped:?}");
    assert_eq!(db.count("SELECT count(*) FROM audit"), 1);
    let kept: Vec<String> = db.query("SELECT activity_id FROM audit_lookup").iter().map(|r| r.get(0)).collect();
    assert_eq!(kept, ["new"], "one lookup (what is not a name is not stored), of the day kept");
}

/// A lead two contacts match, for a tenant that reviews such leads: dead-lettered as
/// AMBIGUOUS_MATCH (in the audit store, listed by its reason), the people merged in the
/// CRM, the entry replayed: the lead updates the survivor, nobody is created, and
/// `crm-sync trace` by the lead id shows its way (the search, the dead letter, the replay's
/// write and the person).
#[test]
fn an_ambiguous_lead_is_replayed_once_its_people_are_merged() {
    use crm_sync_tests::lead_suite::HUBSPOT_LEADS as LC;
    let broker = Broker::start(1);
    let db = PrivateDb::new("leadreplay");
    let sim = CrmSim::start();
    LC.account(
        &sim,
        "acme",
        json!({"objects": {"contacts": [HUBSPOT.contact_on("Twin", "(415) 555-0199"), HUBSPOT.contact_on("Twain", "(415) 555-0199")]}}),
    );
    let tenants = LC.tenants(&sim, &["acme"], "on_ambiguous_match = \"dead_letter\"");
    let prefix = RedisPrefix::new("leadreplay");
    let w = HUBSPOT.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    let s = sink(&broker, &db, "audit-sink");
    let lead = LC.lead("acme", "expo-12", |l| {
        l.email = None;
        l.phone_e164 = Some("+14155550199".into());
        l.attribution.utm_campaign = Some("expo".into());
    });
    broker.produce("crm.writes.hubspot", &[lead]);
    assert_eq!(db.wait_count("SELECT count(*) FROM dlq WHERE reason = 'AMBIGUOUS_MATCH'", 1, Duration::from_secs(60)), 1);
    let env = [("DATABASE_URL", db.url.as_str()), ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.as_str()), ("USER", "support-jane")];
    let (ok, list, err) = crm_sync(&["dlq", "list", "--reason", "ambiguous_match", "--tenant", "acme"], &env);
    assert!(ok && list.contains("AMBIGUOUS_MATCH") && list.contains("(1 entries)"), "{list}{err}");
    let id: String = db.query("SELECT dlq_id FROM dlq WHERE call_id = 'expo-12'")[0].get(0);

    // Someone merges the two contacts; the replay updates the one left.
    let twins: Vec<String> = sim
        .records("hubspot", "acme", "contacts")
        .iter()
        .filter(|c| c["fields"]["phone"].as_str().is_some_and(|p| p.contains("0199")))
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(twins.len(), 2);
    sim.admin("POST", &format!("/accounts/hubspot/acme/objects/contacts/{}/merge", twins[1]), Some(json!({"into": twins[0]})));
    let before = LC.people(&sim, "acme").len();
    let (ok, out, err) = crm_sync(&["dlq", "replay", &id], &env);
    assert!(ok && out.contains("replayed 1 entries"), "{out}{err}");
    let (finals, _, _) = outcomes(&broker, 2, Duration::from_secs(60));
    let replayed = finals.iter().find(|f| f.outcome == AuditOutcome::Succeeded).unwrap_or_else(|| panic!("{finals:?}"));
    assert_eq!(replayed.crm_record_id.as_deref(), Some(twins[0].as_str()), "{replayed:?}");
    let survivor = sim.records("hubspot", "acme", "contacts").into_iter().find(|c| c["id"] == json!(twins[0])).unwrap();
    assert_eq!(survivor["fields"]["crm_sync_latest_campaign"], "expo");
    assert_eq!(LC.people(&sim, "acme").len(), before, "nobody created");
    wait_for("the replay's write in the audit store", Duration::from_secs(30), || {
        db.count("SELECT count(*) FROM audit WHERE call_id = 'expo-12' AND operation = 'write' AND outcome = 'SUCCEEDED'") == 1
    });
    let (ok, text, err) = crm_sync(&["trace", "expo-12", "--tenant", "acme"], &[("DATABASE_URL", db.url.as_str())]);
    assert!(ok, "{err}");
    for expected in ["AMBIGUOUS_MATCH", "contacts/search", &format!("record {}", twins[0])] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("4155550199"), "numbers stay masked: {text}");
    for p in [w, s] {
        assert!(p.terminate().success());
    }
}
