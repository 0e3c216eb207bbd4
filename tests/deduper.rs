//! The deduper as a separate process against the dev broker and Redis: fan-out to each
//! connected CRM with the idempotency key, repeats and stale versions suppressed and audited,
//! updates passed, windows per source (TTL and expiry), unknown tenants and bad bytes to the
//! DLQ, offsets committed; and a Redis outage that commits nothing and resumes by itself.

use crm_common::codec;
use crm_common::events::*;
use crm_common::kafka::InMessage;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::{normalised_call, Broker, PrivateRedis, RedisPrefix, TempFile, MACHINE_REDIS};
use std::time::Duration;

const TENANTS: &str = r#"
[tenants.acme]
default_region = "US"
[tenants.acme.dedup_windows]
fastpbx = "6s"
[tenants.acme.crms.hubspot]
plan = "professional"
credentials_secret = "ACME_HUBSPOT_TOKEN"
[tenants.acme.crms.salesforce]
plan = "enterprise"
credentials_secret = "ACME_SF"
[tenants.globex]
default_region = "GB"
[tenants.globex.crms.zoho]
plan = "standard"
credentials_secret = "GLOBEX_ZOHO"
[tenants.quiet]
default_region = "US"
"#;

fn msg(call: &NormalisedCall) -> (String, Vec<u8>, Vec<(String, String)>) {
    (call.tenant_id.clone(), codec::encode(call).unwrap(), vec![])
}

fn writes(ms: &[InMessage], topic: &str) -> Vec<CrmWriteRequest> {
    ms.iter().filter(|m| m.topic == topic).map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect()
}

#[test]
fn fans_out_suppresses_repeats_and_dead_letters() {
    let broker = Broker::start(3);
    let tenants = TempFile::new("tenants.toml", TENANTS);
    let prefix = RedisPrefix::new("deduper");
    let env = [
        ("TENANTS_CONFIG", tenants.path()),
        ("REDIS_URL", MACHINE_REDIS),
        ("REDIS_KEY_PREFIX", prefix.0.as_str()),
        ("PIPELINE_COMMIT_INTERVAL_MS", "100"),
        // umbrella is in no tenants file: waited for this long, then dead-lettered (its
        // batch's outputs come that much later: fastpbx's window outlasts it).
        ("TENANT_WAIT", "1s"),
    ];
    let deduper = broker.service("deduper", &env);

    let mut fast = normalised_call("acme", "c2", 1);
    fast.source = "fastpbx".into();
    let mut inputs = vec![
        msg(&normalised_call("acme", "c1", 1)),
        msg(&normalised_call("acme", "c1", 1)), // a true repeat
        msg(&normalised_call("acme", "c1", 2)), // an update
        msg(&normalised_call("acme", "c1", 1)), // stale: older than what was written
        msg(&normalised_call("globex", "g1", 1)),
        msg(&normalised_call("quiet", "q1", 1)), // configured, no CRM connected
        msg(&normalised_call("umbrella", "u1", 1)),
        msg(&normalised_call("acme", "", 1)), // no call id
        msg(&fast),
    ];
    inputs.push(("acme".into(), b"\x00\x01not avro".to_vec(), vec![]));
    broker.produce("calls.normalised", &inputs);

    let all = ["crm.writes.hubspot", "crm.writes.salesforce", "crm.writes.zoho", "crm.writes.pipedrive", "sync.audit", "sync.dlq"];
    // 3 writes each to HubSpot and Salesforce, 1 to Zoho; 15 audit records; 3 DLQ entries.
    let seen = broker.read(&all, 25, Duration::from_secs(60));
    let hubspot = writes(&seen, "crm.writes.hubspot");
    let salesforce = writes(&seen, "crm.writes.salesforce");
    let versions = |w: &[CrmWriteRequest]| w.iter().map(|r| (r.call_id.clone(), r.version)).collect::<Vec<_>>();
    let expected = vec![("c1".to_string(), 1), ("c1".to_string(), 2), ("c2".to_string(), 1)];
    assert_eq!(versions(&hubspot), expected, "HubSpot gets the new call, its update and c2, in order");
    assert_eq!(versions(&salesforce), expected);
    assert_eq!(hubspot[1].idempotency_key, "acme:c1:hubspot");
    assert_eq!(salesforce[1].idempotency_key, "acme:c1:salesforce");
    assert_eq!(hubspot[1].crm, Crm::Hubspot);
    assert_eq!(hubspot[1].call, normalised_call("acme", "c1", 2), "the call travels unchanged");
    let zoho = writes(&seen, "crm.writes.zoho");
    assert_eq!(versions(&zoho), vec![("g1".to_string(), 1)]);
    assert!(writes(&seen, "crm.writes.pipedrive").is_empty());
    assert!(seen
        .iter()
        .filter(|m| m.topic.starts_with("crm.writes."))
        .all(|m| m.key_str().as_deref() == Some(if m.topic.ends_with("zoho") { "globex" } else { "acme" })));

    let dlq: Vec<DeadLetter> =
        seen.iter().filter(|m| m.topic == "sync.dlq").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let mut reasons: Vec<(String, DlqReason)> = dlq.iter().map(|d| (d.tenant_id.clone(), d.reason)).collect();
    reasons.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        reasons,
        vec![
            ("acme".into(), DlqReason::SchemaInvalid),
            ("acme".into(), DlqReason::Validation),
            ("umbrella".into(), DlqReason::TenantNotConfigured)
        ]
    );
    let unknown = dlq.iter().find(|d| d.reason == DlqReason::TenantNotConfigured).unwrap();
    assert_eq!(unknown.stage, Stage::Deduper);
    assert_eq!(unknown.source_topic, "calls.normalised");
    assert_eq!(unknown.payload, inputs[6].1, "the DLQ keeps the original bytes for replay");
    assert_eq!(unknown.detail, "tenant \"umbrella\" is not in TENANTS_CONFIG");
    assert!(deduper.log_text().contains("outcome=\"timed_out\""), "the deduper waited for its file first: {}", deduper.log_text());

    let audit: Vec<AuditRecord> =
        seen.iter().filter(|m| m.topic == "sync.audit").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    assert_eq!(audit.len(), 15, "{audit:#?}");
    let dup: Vec<&AuditRecord> = audit.iter().filter(|a| a.outcome == AuditOutcome::Duplicate).collect();
    assert_eq!(dup.len(), 4, "the repeat and the stale version, once per connected CRM");
    assert!(dup.iter().all(|a| a.call_id.as_deref() == Some("c1") && a.crm.is_some() && a.idempotency_key.is_some()));
    let stale = dup.iter().find(|a| a.attributes.get("marked_version").map(String::as_str) == Some("2")).expect("stale audit");
    assert!(stale.detail.contains("version 1 arrived after version 2"), "{}", stale.detail);
    assert!(audit.iter().any(|a| a.call_id.as_deref() == Some("q1") && a.outcome == AuditOutcome::Skipped));
    let update = audit.iter().find(|a| a.attributes.get("mark").map(String::as_str) == Some("update")).expect("update audit");
    assert_eq!(update.attributes["previous_version"], "1");
    assert!(audit.iter().all(|a| a.stage == Stage::Deduper));

    // Marks: hash-tagged by tenant, TTL from the window (24h default; 6s for fastpbx).
    let client = redis::Client::open(MACHINE_REDIS).unwrap();
    let mut c = client.get_connection().unwrap();
    let c1 = format!("{}:{{acme}}:dedup:c1", prefix.0);
    let ttl: i64 = redis::cmd("PTTL").arg(&c1).query(&mut c).unwrap();
    assert!(ttl > 23 * 3_600_000 && ttl <= 24 * 3_600_000, "default window 24h: {ttl}");
    let v: String = redis::cmd("GET").arg(&c1).query(&mut c).unwrap();
    let (version, by) = v.split_once('|').expect("version|input");
    assert_eq!(version, "2");
    assert!(by.starts_with("calls.normalised/"), "the input that set it: {v}");
    let ttl: i64 = redis::cmd("PTTL").arg(format!("{}:{{acme}}:dedup:c2", prefix.0)).query(&mut c).unwrap();
    assert!(ttl > 0 && ttl <= 6000, "fastpbx window 6s: {ttl}");

    // Once fastpbx's window has passed, the same call is new again; c1 is still a repeat.
    std::thread::sleep(Duration::from_millis(6500));
    broker.produce("calls.normalised", &[msg(&fast), msg(&normalised_call("acme", "c1", 2))]);
    let seen = broker.read(&["crm.writes.hubspot"], 4, Duration::from_secs(30));
    assert_eq!(
        versions(&writes(&seen, "crm.writes.hubspot")),
        vec![("c1".to_string(), 1), ("c1".to_string(), 2), ("c2".to_string(), 1), ("c2".to_string(), 1)]
    );

    // Everything read is committed, and SIGTERM stops it cleanly.
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("deduper", "calls.normalised") == 12);
    let status = deduper.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn redis_outage_commits_nothing_and_resumes() {
    let broker = Broker::start(2);
    let tenants = TempFile::new("tenants.toml", TENANTS);
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let env = [("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", url.as_str()), ("PIPELINE_COMMIT_INTERVAL_MS", "100")];
    let mut deduper = broker.service("deduper", &env);
    let batch = |from: usize| (from..from + 5).map(|i| msg(&normalised_call("globex", &format!("g{i}"), 1))).collect::<Vec<_>>();
    broker.produce("calls.normalised", &batch(0));
    let reader = broker.reader(&["crm.writes.zoho"]);
    let mut got = reader.read_until(Duration::from_secs(60), |m| m.len() >= 5);
    assert_eq!(got.len(), 5);
    wait_for("first batch committed", Duration::from_secs(20), || broker.committed("deduper", "calls.normalised") == 5);

    redis.kill();
    broker.produce("calls.normalised", &batch(5));
    std::thread::sleep(Duration::from_secs(6));
    assert!(reader.read_until(Duration::from_millis(500), |_| false).is_empty(), "nothing may pass while Redis is down");
    assert_eq!(broker.committed("deduper", "calls.normalised"), 5, "no offset committed past the outage");
    assert!(deduper.alive(), "the deduper waits for Redis; it does not exit");
    let log = deduper.log_text();
    assert!(
        log.contains(&format!("Redis at {url}/ failed")) || log.contains(&format!("Redis at {url} failed")),
        "a clear error names Redis: {log}"
    );

    redis.up();
    got.extend(reader.read_until(Duration::from_secs(60), |m| m.len() >= 5));
    let mut ids: Vec<String> =
        got.iter().map(|m| codec::decode::<CrmWriteRequest>(m.payload.as_deref().unwrap()).unwrap().call_id).collect();
    ids.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(ids, (0..10).map(|i| format!("g{i}")).collect::<Vec<_>>(), "every call once, none lost");
    wait_for("second batch committed", Duration::from_secs(20), || broker.committed("deduper", "calls.normalised") == 10);
    let status = deduper.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn a_bad_tenants_file_stops_the_deduper_with_its_reason() {
    let broker = Broker::start(1);
    let tenants = TempFile::new("tenants.toml", "[tenants.\"a:b\"]\ndefault_region = \"US\"\n");
    let mut p = broker.service("deduper", &[("TENANTS_CONFIG", tenants.path())]);
    let status = p.child.wait().unwrap();
    assert!(!status.success());
    assert!(p.log_text().contains("tenant id \"a:b\""), "{}", p.log_text());
}

/// Emails and meetings beside calls: each kind goes only to the CRMs whose `activities`
/// take it, as an ActivityWriteRequest with its kind in the key; repeats and stale versions
/// are suppressed per kind (an email's Message-ID never meets a call id of the same text);
/// a kind no CRM of the tenant takes is skipped and audited. A writer asked to write a kind
/// it cannot refuses to start.
#[test]
fn emails_and_meetings_go_to_the_crms_that_take_them() {
    let broker = Broker::start(2);
    let tenants = TempFile::new(
        "tenants.toml",
        r#"
[tenants.acme]
default_region = "US"
[tenants.acme.crms.hubspot]
plan = "professional"
credentials_secret = "ACME_HUBSPOT_TOKEN"
activities = ["call", "email", "meeting"]
[tenants.acme.crms.zoho]
plan = "standard"
credentials_secret = "ACME_ZOHO"
activities = ["call", "email"]
[tenants.globex]
default_region = "US"
[tenants.globex.crms.hubspot]
plan = "professional"
credentials_secret = "GLOBEX_HUBSPOT_TOKEN"
activities = ["lead"]
"#,
    );
    let prefix = RedisPrefix::new("deduper-kinds");
    let env = [("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", MACHINE_REDIS), ("REDIS_KEY_PREFIX", prefix.0.as_str())];
    let _deduper = broker.service("deduper", &env);

    let email = fixtures::email_request("acme", "m1", Crm::Hubspot).email.unwrap();
    let mut meeting = fixtures::meeting_request("acme", "e1", Crm::Hubspot).meeting.unwrap();
    meeting.version = 2;
    let mut stale = meeting.clone();
    stale.version = 1;
    // A call whose id is the email's Message-ID: a different activity.
    let call = normalised_call("acme", &email.message_id, 1);
    let enc = |b: Vec<u8>| ("acme".to_string(), b, vec![]);
    broker.produce("emails.normalised", &[enc(codec::encode(&email).unwrap()), enc(codec::encode(&email).unwrap())]);
    broker.produce("meetings.normalised", &[enc(codec::encode(&meeting).unwrap()), enc(codec::encode(&stale).unwrap())]);
    broker.produce("calls.normalised", &[msg(&call)]);
    // A lead: no connection of acme's takes leads, so it is audited as skipped, written
    // nowhere; globex's HubSpot takes them.
    broker.produce("leads.normalised", &[enc(codec::encode(&fixtures::normalised_lead("acme", "l1", 1)).unwrap())]);
    broker.produce("leads.normalised", &[("globex".into(), codec::encode(&fixtures::normalised_lead("globex", "l2", 1)).unwrap(), vec![])]);

    // Audits: email 2 inputs × 2 CRMs, meeting 2 × 1, call 1 × 2, lead 1 + 1 = 10; writes: 2 + 1 + 2 + 1 = 6.
    let out = broker.read(&["crm.writes.hubspot", "crm.writes.zoho", "sync.audit"], 16, Duration::from_secs(60));
    let requests = |topic: &str| -> Vec<ActivityWriteRequest> {
        out.iter().filter(|m| m.topic == topic).filter_map(|m| codec::decode(m.payload.as_deref().unwrap()).ok()).collect()
    };
    let (hubspot, zoho) = (requests("crm.writes.hubspot"), requests("crm.writes.zoho"));
    // Emails and meetings come from two topics: their order on the way out is not defined.
    let keys = |rs: &[ActivityWriteRequest]| rs.iter().map(|r| r.idempotency_key.clone()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        keys(&hubspot),
        [
            "acme:email:m1@mail.acme.example:hubspot".to_string(),
            "acme:meeting:e1@google.com:hubspot".to_string(),
            "globex:lead:l2:hubspot".to_string()
        ]
        .into(),
        "{out:?}"
    );
    let globex_lead = hubspot.iter().find(|r| r.tenant_id == "globex").and_then(|r| r.lead.as_ref()).expect("the lead's body");
    assert_eq!((globex_lead.lead_id.as_str(), globex_lead.email.as_deref()), ("l2", Some("jane.doe@customer.example")));
    assert_eq!(keys(&zoho), ["acme:email:m1@mail.acme.example:zoho".to_string()].into(), "zoho takes no meetings");
    let meeting_out = hubspot.iter().find_map(|r| r.meeting.as_ref());
    assert_eq!(meeting_out.map(|m| (m.version, m.status)), Some((2, MeetingStatus::Cancelled)));
    let calls: Vec<CrmWriteRequest> =
        out.iter().filter(|m| m.topic == "crm.writes.hubspot").filter_map(|m| codec::decode(m.payload.as_deref().unwrap()).ok()).collect();
    assert_eq!(calls.len(), 1, "the call went on as a CrmWriteRequest with its own key");
    assert_eq!(calls[0].idempotency_key, format!("acme:{}:hubspot", email.message_id));
    let audits: Vec<AuditRecord> =
        out.iter().filter(|m| m.topic == "sync.audit").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let dup = |kind| audits.iter().filter(|a| a.kind == Some(kind) && a.outcome == AuditOutcome::Duplicate).count();
    assert_eq!((dup(ActivityKind::Email), dup(ActivityKind::Meeting)), (2, 1), "the repeated email per CRM, the stale meeting");
    let lead = audits.iter().find(|a| a.kind == Some(ActivityKind::Lead) && a.tenant_id == "acme").expect("the lead is audited");
    assert_eq!((lead.outcome, lead.call_id.as_deref()), (AuditOutcome::Skipped, Some("l1")));
    assert!(lead.detail.contains("takes leads"), "{}", lead.detail);
    assert!(
        !hubspot.iter().chain(&zoho).any(|r| r.kind == ActivityKind::Lead && r.tenant_id == "acme"),
        "no lead request of acme's: {out:?}"
    );

    let quiet = TempFile::new(
        "tenants.toml",
        "[tenants.acme]\ndefault_region = \"US\"\n[tenants.acme.crms.hubspot]\nplan = \"professional\"\ncredentials_secret = \"X\"\nactivities = [\"email\"]\n",
    );
    // A deployment whose HubSpot writer has the call contract only.
    let contracts = std::env::temp_dir().join(format!("contracts-calls-only-{}", std::process::id()));
    std::fs::create_dir_all(&contracts).unwrap();
    std::fs::copy(crm_sync_tests::repo_root().join("contracts/hubspot.toml"), contracts.join("hubspot.toml")).unwrap();
    let env = [
        ("TENANTS_CONFIG", quiet.path()),
        ("REDIS_URL", MACHINE_REDIS),
        ("X", "t"),
        ("WRITER_CRM", "hubspot"),
        ("CONTRACTS_DIR", contracts.to_str().unwrap()),
    ];
    let mut writer = broker.service("writer", &env);
    assert!(!writer.child.wait().unwrap().success(), "a writer asked for emails it has no contract for refuses to start");
    let log = writer.log_text();
    assert!(
        log.contains("names 'email', which writer --crm hubspot does not write") && log.contains("contracts/<crm>.<kind>.toml"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&contracts);
}
