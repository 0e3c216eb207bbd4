//! The producers' and readers' examples under `examples/python/` run as their users would run
//! them, against a real broker and the services as processes: `crm-sync schemas` and Python's
//! fastavro agree on every fingerprint; the example producer's CallEvent, EmailEvent and
//! MeetingEvent (confluent-kafka, Avro single-object encoding) are accepted by the
//! normaliser; the example reader decodes `sync.audit` and `sync.dlq`; the audit store's
//! views answer the example queries.

use crm_common::codec;
use crm_common::events::{NormalisedCall, NormalisedEmail, NormalisedLead, NormalisedMeeting};
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::{bin, repo_root, Broker, PrivateDb, TempFile};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

fn run(cmd: &mut Command) -> String {
    let out = cmd.current_dir(repo_root()).output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn crm_sync_schemas_and_fastavro_agree_on_every_fingerprint() {
    let listed: Vec<Value> = run(Command::new(bin("crm-sync")).args(["schemas", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let python = run(Command::new("python3").args([
        "-c",
        "import sys, json, glob; sys.path.insert(0, 'examples/python'); import crm_sync_avro as a; \
         ss = [a.Schema(p) for p in glob.glob('schemas/**/*.avsc', recursive=True)]; \
         print(json.dumps({'schemas/' + s.path: [s.fingerprint.hex(), s.fingerprint64, s.name] for s in ss}))",
    ]));
    let python: BTreeMap<String, (String, i64, String)> = serde_json::from_str(&python).expect("python's JSON");
    for kind in ["CallEvent", "EmailEvent", "MeetingEvent", "AuditRecord", "DeadLetter"] {
        assert!(
            listed.iter().any(|l| l["status"] == "current" && l["name"] == format!("io.crmsync.events.{kind}")),
            "{kind} is listed: {listed:?}"
        );
    }
    for l in &listed {
        let file = l["file"].as_str().unwrap();
        let (hex, long, name) = python.get(file).unwrap_or_else(|| panic!("{file} is not among python's {python:?}"));
        assert_eq!(l["fingerprint"].as_str(), Some(hex.as_str()), "{file}");
        assert_eq!(l["fingerprint64"].as_i64(), Some(*long), "{file}");
        assert_eq!(l["name"].as_str(), Some(name.as_str()), "{file}");
    }
    let table = run(Command::new(bin("crm-sync")).arg("schemas"));
    assert!(table.contains("calls.raw") && table.contains("schemas/call_event.avsc") && table.contains("C3 01"), "{table}");
}

#[test]
fn python_events_are_normalised_and_python_reads_audit_dlq_and_the_views() {
    let broker = Broker::start(1);
    let db = PrivateDb::new("examples");
    let tenants = TempFile::new("tenants.toml", "[tenants.acme]\ndefault_region = \"US\"\n");
    let produced = run(Command::new("python3").args([
        "examples/python/produce_events.py",
        "--bootstrap",
        &broker.bootstrap,
        "--tenant",
        "acme",
        "--suffix",
        "t1",
    ]));
    for topic in ["calls.raw", "emails.raw", "meetings.raw", "leads.raw"] {
        assert!(produced.contains(&format!("-> {topic} ")), "{produced}");
    }
    // What an upstream team must not do: bytes that are no event. Dead-lettered, not lost.
    broker.produce("calls.raw", &[("acme".to_string(), b"{\"call_id\": \"json, not avro\"}".to_vec(), vec![])]);
    let normaliser = broker.service("normaliser", &[("TENANTS_CONFIG", tenants.path())]);
    let sink = broker.service(
        "audit-sink",
        &[("DATABASE_URL", db.url.as_str()), ("TENANTS_CONFIG", "/dev/null"), ("PIPELINE_COMMIT_INTERVAL_MS", "100")],
    );

    let outs =
        broker.read(&["calls.normalised", "emails.normalised", "meetings.normalised", "leads.normalised"], 4, Duration::from_secs(60));
    assert_eq!(outs.len(), 4, "all four events were accepted");
    for m in &outs {
        let bytes = m.payload.as_deref().unwrap();
        match m.topic.as_str() {
            "calls.normalised" => {
                let c: NormalisedCall = codec::decode(bytes).unwrap();
                assert_eq!((c.call_id.as_str(), c.to_e164.as_str()), ("example-call-t1", "+14155550134"));
            }
            "emails.normalised" => {
                let e: NormalisedEmail = codec::decode(bytes).unwrap();
                assert_eq!(e.tenant_id, "acme");
            }
            "leads.normalised" => {
                let l: NormalisedLead = codec::decode(bytes).unwrap();
                assert_eq!(
                    (l.lead_id.as_str(), l.email.as_deref(), l.phone_e164.as_deref(), l.country.as_deref()),
                    ("example-lead-t1", Some("linus.prospect@prospect.example"), Some("+4930901820"), Some("DE"))
                );
            }
            _ => {
                let e: NormalisedMeeting = codec::decode(bytes).unwrap();
                assert_eq!(e.tenant_id, "acme");
            }
        }
        assert_eq!(m.key.as_deref(), Some(&b"acme"[..]), "keyed by tenant");
    }

    let read = run(Command::new("python3").args([
        "examples/python/read_outcomes.py",
        "--bootstrap",
        &broker.bootstrap,
        "--group",
        "analytics",
        "--idle",
        "6",
    ]));
    let lines: Vec<Value> = read.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    let audit: Vec<&Value> = lines.iter().filter(|l| l["topic"] == "sync.audit").collect();
    let dlq: Vec<&Value> = lines.iter().filter(|l| l["topic"] == "sync.dlq").collect();
    assert!(lines.iter().all(|l| l.get("error").is_none()), "every message decoded: {read}");
    // A call by its id, an email by its Message-ID (brackets gone), a meeting by its iCalendar UID.
    for (id, kind) in [
        ("example-call-t1", "CALL"),
        ("example-t1@acme.example", "EMAIL"),
        ("example-t1@calendar.acme.example", "MEETING"),
        ("example-lead-t1", "LEAD"),
    ] {
        assert!(
            audit.iter().any(|a| a["schema"] == "io.crmsync.events.AuditRecord"
                && a["record"]["call_id"] == id
                && a["record"]["kind"] == kind
                && a["record"]["outcome"] == "SUCCEEDED"),
            "an audit record for {id}: {read}"
        );
    }
    assert_eq!(dlq.len(), 1, "{read}");
    assert_eq!(dlq[0]["record"]["reason"], "SCHEMA_INVALID", "{read}");

    // The store's views answer the example queries.
    wait_for("the audit store", Duration::from_secs(30), || {
        db.count("SELECT count(*) FROM audit") >= 3 && db.count("SELECT count(*) FROM dlq") == 1
    });
    let answers = run(Command::new("psql").args([
        &db.url,
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "tenant=acme",
        "-v",
        "activity=example-call-t1",
        "-f",
        "examples/python/audit_queries.sql",
    ]));
    assert!(answers.contains("NORMALISER"), "audit_daily and activity_history name the stage: {answers}");
    assert!(answers.contains("SCHEMA_INVALID") && answers.contains("open"), "dlq_by_reason: {answers}");
    let daily = db.count("SELECT sum(records)::bigint FROM audit_daily WHERE tenant_id = 'acme'");
    assert_eq!(daily, db.count("SELECT count(*) FROM audit WHERE tenant_id = 'acme'"), "audit_daily counts every row");
    let history = db.count("SELECT count(*) FROM activity_history WHERE activity_id = 'example-call-t1' AND tenant_id = 'acme'");
    assert!(history >= 1, "{history}");
    for p in [normaliser, sink] {
        assert!(p.terminate().success());
    }
}
