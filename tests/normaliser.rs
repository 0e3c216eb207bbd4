//! The normaliser as a separate process against the dev broker: exact outputs, DLQ entries
//! carrying the original bytes, one audit record per input, keys and trace ids.

use crm_common::codec;
use crm_common::events::*;
use crm_common::kafka::InMessage;
use crm_sync_tests::{Broker, TempFile};
use std::collections::HashMap;
use std::time::Duration;

const TENANTS: &str = r#"
[tenants.acme]
default_region = "US"
[tenants.globex]
default_region = "GB"
show_phone_numbers_in_audit = true
[tenants.initech]
default_region = "DE"
"#;

fn call(tenant: &str, id: &str, dir: CallDirection, from: &str, to: &str, hint: Option<&str>) -> CallEvent {
    CallEvent {
        tenant_id: tenant.into(),
        call_id: id.into(),
        source: "pbx".into(),
        version: 2,
        direction: dir,
        from_number: from.into(),
        to_number: to.into(),
        region_hint: hint.map(Into::into),
        started_at: 1_767_225_600_000,
        ended_at: Some(1_767_225_660_000),
        duration_s: Some(60),
        outcome: Some(CallOutcome::Voicemail),
        agent_id: "agent-1".into(),
        agent_email: Some("a1@example.com".into()),
        recording_url: Some("https://rec.example/r1".into()),
        notes: Some("left a message".into()),
        attributes: HashMap::from([("queue".into(), "emea".into())]),
    }
}

fn expected(ev: &CallEvent, from: &str, to: &str, region: &str) -> NormalisedCall {
    NormalisedCall {
        tenant_id: ev.tenant_id.clone(),
        call_id: ev.call_id.clone(),
        source: ev.source.clone(),
        version: ev.version,
        direction: ev.direction,
        from_e164: from.into(),
        to_e164: to.into(),
        customer_e164: if ev.direction == CallDirection::Inbound { from.into() } else { to.into() },
        from_raw: ev.from_number.clone(),
        to_raw: ev.to_number.clone(),
        region_used: region.into(),
        started_at: ev.started_at,
        ended_at: ev.ended_at,
        duration_s: ev.duration_s,
        outcome: ev.outcome,
        agent_id: ev.agent_id.clone(),
        agent_email: ev.agent_email.clone(),
        recording_url: ev.recording_url.clone(),
        notes: ev.notes.clone(),
        attributes: ev.attributes.clone(),
        normalised_at: 0,
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[test]
fn normalises_dead_letters_and_audits_every_input() {
    let broker = Broker::start(3);
    let tenants = TempFile::new("tenants.toml", TENANTS);
    let _normaliser = broker.service("normaliser", &[("TENANTS_CONFIG", tenants.path())]);

    use CallDirection::*;
    let good = [
        (call("acme", "a-1", Outbound, "(415) 555-2671", "+44 (0)20 7946 0958", None), "+14155552671", "+442079460958", "US"),
        (call("globex", "g-1", Inbound, "020 7946 0958", "07911 123456", None), "+442079460958", "+447911123456", "GB"),
        (call("initech", "i-1", Outbound, "+49 30 901820", "06 12 34 56 78", Some("fr")), "+4930901820", "+33612345678", "FR"),
        (call("acme", "a-2", Outbound, "+1 415.555.2671", "00 39 02 1234 5678", Some("GB")), "+14155552671", "+390212345678", "GB"),
    ];
    let bad_phone = call("acme", "a-3", Inbound, "anonymous", "+1 415 555 2671", None);
    let no_tenant = call("umbrella", "u-1", Inbound, "+1 415 555 2671", "+1 650 253 0000", None);
    let audit_as_input = AuditRecord {
        audit_id: "x".into(),
        tenant_id: "acme".into(),
        call_id: None,
        crm: None,
        stage: Stage::Operator,
        operation: "x".into(),
        outcome: AuditOutcome::Skipped,
        reason: None,
        detail: String::new(),
        attempt: 1,
        version: None,
        idempotency_key: None,
        crm_status: None,
        crm_response_excerpt: None,
        crm_record_id: None,
        latency_ms: None,
        input_topic: String::new(),
        input_partition: -1,
        input_offset: -1,
        occurred_at: 0,
        trace_id: TRACE.into(),
        attributes: HashMap::new(),
        kind: None,
    };
    let mut confluent_unknown = vec![0u8, 0, 0, 0, 9];
    confluent_unknown.extend_from_slice(&codec::encode(&bad_phone).unwrap()[10..]);

    let traceparent = vec![("traceparent".to_string(), format!("00-{TRACE}-00f067aa0ba902b7-01"))];
    let mut inputs: Vec<crm_sync_tests::Msg> =
        good.iter().map(|(c, ..)| (c.tenant_id.clone(), codec::encode(c).unwrap(), traceparent.clone())).collect();
    inputs.push(("acme".into(), codec::encode(&bad_phone).unwrap(), vec![]));
    inputs.push(("umbrella".into(), codec::encode(&no_tenant).unwrap(), vec![]));
    inputs.push(("acme".into(), b"not avro at all".to_vec(), vec![]));
    inputs.push(("acme".into(), codec::encode(&audit_as_input).unwrap(), vec![]));
    inputs.push(("acme".into(), confluent_unknown.clone(), vec![]));
    let started = crm_common::clock::now_ms();
    broker.produce("calls.raw", &inputs);

    let n = inputs.len();
    let out = broker.read(&["calls.normalised", "sync.dlq", "sync.audit"], 2 * n, Duration::from_secs(60));
    let on = |t: &str| out.iter().filter(|m| m.topic == t).cloned().collect::<Vec<InMessage>>();
    let (normalised, dlq, audit) = (on("calls.normalised"), on("sync.dlq"), on("sync.audit"));
    assert_eq!(normalised.len(), good.len(), "normalised outputs");
    assert_eq!(dlq.len(), 5, "dead letters");
    assert_eq!(out.len(), 2 * n, "nothing else was produced");
    assert_eq!(audit.len(), n, "one audit record per input");

    // Exact normalised records, keyed by tenant, trace id carried over.
    for (ev, from, to, region) in &good {
        let m = normalised
            .iter()
            .find(|m| codec::decode::<NormalisedCall>(m.payload.as_deref().unwrap()).unwrap().call_id == ev.call_id)
            .unwrap_or_else(|| panic!("{} not normalised", ev.call_id));
        let mut got = codec::decode::<NormalisedCall>(m.payload.as_deref().unwrap()).unwrap();
        assert!(got.normalised_at >= started, "normalised_at is set");
        got.normalised_at = 0;
        assert_eq!(got, expected(ev, from, to, region));
        assert_eq!(m.key_str().as_deref(), Some(ev.tenant_id.as_str()));
        assert_eq!(m.trace_id, TRACE);
    }

    // Dead letters: the right reason, the original bytes, where they came from.
    let dls: Vec<DeadLetter> = dlq.iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let by_payload = |p: &[u8]| dls.iter().find(|d| d.payload == p).unwrap_or_else(|| panic!("no DLQ entry for payload"));
    let d = by_payload(&inputs[4].1);
    assert_eq!((d.reason, d.call_id.as_deref(), d.tenant_id.as_str()), (DlqReason::InvalidPhone, Some("a-3"), "acme"));
    // acme masks numbers: the dead letter names the field, its value masked (no digits
    // here, so nothing is left); the payload keeps the original for replay.
    assert!(d.detail.contains("from_number \"\" cannot be made E.164"), "{}", d.detail);
    assert_eq!(codec::decode::<CallEvent>(&d.payload).unwrap().from_number, "anonymous");
    let d = by_payload(&inputs[5].1);
    assert_eq!((d.reason, d.tenant_id.as_str()), (DlqReason::TenantNotConfigured, "umbrella"));
    for input in &inputs[6..9] {
        let d = by_payload(&input.1);
        assert_eq!(d.reason, DlqReason::SchemaInvalid, "{}", d.detail);
        assert_eq!(d.tenant_id, "acme", "tenant taken from the message key");
        assert_eq!(d.source_key.as_deref(), Some(&b"acme"[..]));
    }
    assert!(by_payload(&inputs[7].1).detail.contains("AuditRecord"));
    assert!(by_payload(&inputs[8].1).detail.contains("Confluent schema id 9"));
    for (m, d) in dlq.iter().zip(&dls) {
        assert_eq!(d.stage, Stage::Normaliser);
        assert_eq!(d.source_topic, "calls.raw");
        assert!(d.source_offset >= 0);
        assert_eq!(m.key_str().as_deref(), Some(d.tenant_id.as_str()));
    }

    // Audit: one per input, pointing at it, with the outcome; numbers masked for acme.
    let audits: Vec<AuditRecord> = audit.iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let mut positions: Vec<(i32, i64)> = audits.iter().map(|a| (a.input_partition, a.input_offset)).collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), n, "each audit record names a distinct input");
    let ok = audits.iter().filter(|a| a.outcome == AuditOutcome::Succeeded).count();
    let dead = audits.iter().filter(|a| a.outcome == AuditOutcome::DeadLettered).count();
    assert_eq!((ok, dead), (4, 5));
    let a1 = audits.iter().find(|a| a.call_id.as_deref() == Some("a-1")).unwrap();
    assert_eq!(a1.trace_id, TRACE);
    assert!(!a1.detail.contains("555"), "acme masks numbers: {}", a1.detail);
    let g1 = audits.iter().find(|a| a.call_id.as_deref() == Some("g-1")).unwrap();
    assert!(g1.detail.contains("+447911123456"), "globex shows numbers: {}", g1.detail);
    let a3 = audits.iter().find(|a| a.call_id.as_deref() == Some("a-3")).unwrap();
    assert_eq!(a3.reason.as_deref(), Some("INVALID_PHONE"));
    assert!(a3.attributes.contains_key("dlq_id"));
}

/// A restart resumes exactly at the next unread input: nothing skipped, nothing re-read.
/// (librdkafka's legacy offset store adds 1 itself; storing `offset + 1` through it committed
/// one past the next input, which skipped it on restart.)
#[test]
fn restart_resumes_at_the_next_input() {
    let broker = Broker::start(1);
    let tenants = TempFile::new("tenants.toml", TENANTS);
    let env = [("TENANTS_CONFIG", tenants.path()), ("PIPELINE_COMMIT_INTERVAL_MS", "100")];
    let input = |i: usize| {
        let ev = call("acme", &format!("r{i}"), CallDirection::Inbound, "+1 415 555 2671", "+1 650 253 0000", None);
        ("acme".to_string(), codec::encode(&ev).unwrap(), vec![])
    };
    broker.produce("calls.raw", &(0..5).map(input).collect::<Vec<_>>());
    let first = broker.service("normaliser", &env);
    assert_eq!(broker.read(&["calls.normalised"], 5, Duration::from_secs(60)).len(), 5);
    assert!(first.terminate().success(), "graceful stop commits");

    broker.produce("calls.raw", &[input(5)]);
    let second = broker.service("normaliser", &env);
    let reader = broker.reader(&["calls.normalised"]);
    let out = reader.read_until(Duration::from_secs(30), |m| m.len() >= 6);
    // Give a wrongly rewound consumer time to show its duplicates.
    let extra = reader.read_until(Duration::from_secs(3), |_| false);
    let ids: Vec<String> =
        out.iter().chain(extra.iter()).map(|m| codec::decode::<NormalisedCall>(m.payload.as_deref().unwrap()).unwrap().call_id).collect();
    assert!(second.terminate().success());
    assert_eq!(ids, (0..6).map(|i| format!("r{i}")).collect::<Vec<_>>(), "each input exactly once, in order");
}

/// Emails and meetings on their own raw topics: canonical addresses, the other parties,
/// source ids, UTC times; an invalid address is dead-lettered as VALIDATION with its field,
/// a record of the wrong type on a raw topic as SCHEMA_INVALID; every input audited with
/// its kind.
#[test]
fn normalises_emails_and_meetings_and_dead_letters_bad_addresses() {
    use crm_common::events::fixtures::{raw_email, raw_meeting};
    let broker = Broker::start(2);
    let tenants = TempFile::new("tenants.toml", TENANTS);
    let _normaliser = broker.service("normaliser", &[("TENANTS_CONFIG", tenants.path())]);

    let email = raw_email("acme", "m1", 0);
    let mut bad_email = raw_email("acme", "m2", 1);
    bad_email.to = vec!["Jane <jane-at-customer.example>".into()];
    let mut all_day = raw_meeting("acme", "e2", 0);
    (all_day.all_day, all_day.start_at, all_day.end_at) = (true, None, None);
    all_day.start_date = Some("2026-01-05".into());
    all_day.time_zone = Some("Europe/Berlin".into());
    let mut cancelled = raw_meeting("globex", "e1", 0);
    (cancelled.version, cancelled.status) = (2, MeetingStatus::Cancelled);
    let mut no_end = raw_meeting("acme", "e3", 0);
    no_end.end_at = None;
    let enc = |t: &str, b: Vec<u8>| (t.to_string(), b, vec![]);
    broker.produce(
        "emails.raw",
        &[
            enc("acme", codec::encode(&email).unwrap()),
            enc("acme", codec::encode(&bad_email).unwrap()),
            // A meeting on the emails topic is not an EmailEvent.
            enc("acme", codec::encode(&raw_meeting("acme", "x", 0)).unwrap()),
        ],
    );
    broker.produce(
        "meetings.raw",
        &[
            enc("acme", codec::encode(&all_day).unwrap()),
            enc("globex", codec::encode(&cancelled).unwrap()),
            enc("acme", codec::encode(&no_end).unwrap()),
        ],
    );

    let out = broker.read(&["emails.normalised", "meetings.normalised", "sync.dlq", "sync.audit"], 12, Duration::from_secs(60));
    let on = |t: &str| out.iter().filter(|m| m.topic == t).cloned().collect::<Vec<InMessage>>();
    let emails: Vec<NormalisedEmail> =
        on("emails.normalised").iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let meetings: Vec<NormalisedMeeting> =
        on("meetings.normalised").iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let dls: Vec<DeadLetter> = on("sync.dlq").iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let audits: Vec<AuditRecord> = on("sync.audit").iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    assert_eq!((emails.len(), meetings.len(), dls.len(), audits.len()), (1, 2, 3, 6), "{out:?}");

    let e = &emails[0];
    assert_eq!(e.message_id, "m1@mail.acme.example");
    assert_eq!(e.to[0].email, "jane.doe@customer.example");
    assert_eq!(e.participants, ["jane.doe@customer.example", "boss@acme.example", "ops@customer.example"]);
    assert_eq!(on("emails.normalised")[0].key_str().as_deref(), Some("acme"));

    let day = meetings.iter().find(|m| m.event_id == "e2").unwrap();
    assert_eq!((day.source_id.as_str(), day.start_at, day.end_at), ("e2@google.com", 1_767_567_600_000, 1_767_654_000_000));
    let gone = meetings.iter().find(|m| m.event_id == "e1").unwrap();
    assert_eq!((gone.status, gone.version, gone.tenant_id.as_str()), (MeetingStatus::Cancelled, 2, "globex"));

    let bad = dls.iter().find(|d| d.call_id.as_deref() == Some("m2@mail.acme.example")).expect("the bad address is dead-lettered");
    assert_eq!((bad.reason, bad.kind, bad.source_topic.as_str()), (DlqReason::Validation, Some(ActivityKind::Email), "emails.raw"));
    // The dead letter shows the value's shape, not the customer's address; its payload
    // keeps the original for replay.
    assert!(bad.detail.contains("to[0]") && bad.detail.contains("J••• <••••-••-••••••••.•••••••>"), "{}", bad.detail);
    assert!(!bad.detail.contains("jane"), "{}", bad.detail);
    let held: EmailEvent = codec::decode(&bad.payload).unwrap();
    assert_eq!(held.to, ["Jane <jane-at-customer.example>"]);
    let wrong = dls.iter().find(|d| d.reason == DlqReason::SchemaInvalid).expect("wrong record type");
    assert!(wrong.detail.contains("not an EmailEvent"), "{}", wrong.detail);
    let late = dls.iter().find(|d| d.call_id.as_deref() == Some("e3")).expect("meeting without end");
    assert_eq!((late.reason, late.kind), (DlqReason::Validation, Some(ActivityKind::Meeting)));

    let audited = |id: &str| audits.iter().find(|a| a.call_id.as_deref() == Some(id)).unwrap_or_else(|| panic!("{id} audited"));
    assert_eq!(audited("m1@mail.acme.example").kind, Some(ActivityKind::Email));
    assert_eq!(audited("e2@google.com").kind, Some(ActivityKind::Meeting));
    assert!(!audited("m2@mail.acme.example").detail.contains("jane-at"), "audit names the field, not the address");
}

fn audited_outcome(audits: &[AuditRecord], id: &str) -> Option<AuditOutcome> {
    audits.iter().find(|a| a.call_id.as_deref() == Some(id)).map(|a| a.outcome)
}

/// Leads on leads.raw: email, phone and country canonical, names tidy; a lead with one bad
/// key of two goes on and names what it left out; one with neither valid key is
/// dead-lettered VALIDATION with both reasons; one whose person refused processing is
/// audited SKIPPED and goes nowhere else (no record, no dead letter holding their data); an
/// email on the leads topic is SCHEMA_INVALID. Every input audited as a LEAD.
#[test]
fn normalises_leads_skips_refused_consent_and_dead_letters_leads_without_a_key() {
    use crm_common::events::fixtures::{raw_email, raw_lead};
    let broker = Broker::start(2);
    let tenants = TempFile::new("tenants.toml", TENANTS);
    let _normaliser = broker.service("normaliser", &[("TENANTS_CONFIG", tenants.path())]);

    let good = raw_lead("acme", "l1", 0);
    let mut half = raw_lead("globex", "l2", 1); // a GB tenant, a lead in Germany
    (half.email, half.phone, half.country) = (Some("not-an-address".into()), Some("030 901820".into()), Some("DEU".into()));
    let mut keyless = raw_lead("acme", "l3", 2);
    (keyless.email, keyless.phone) = (Some("jane@@customer.example".into()), Some("555".into()));
    let mut refused = raw_lead("acme", "l4", 3);
    refused.consent_to_processing = ConsentState::Denied;
    let enc = |t: &str, b: Vec<u8>| (t.to_string(), b, vec![]);
    broker.produce(
        "leads.raw",
        &[
            enc("acme", codec::encode(&good).unwrap()),
            enc("globex", codec::encode(&half).unwrap()),
            enc("acme", codec::encode(&keyless).unwrap()),
            enc("acme", codec::encode(&refused).unwrap()),
            enc("acme", codec::encode(&raw_email("acme", "m1", 0)).unwrap()),
            // Refused by the person, for a tenant nobody configured: still only skipped.
            enc(
                "nobody",
                codec::encode(&LeadEvent { consent_to_processing: ConsentState::Denied, ..raw_lead("nobody", "l5", 4) }).unwrap(),
            ),
        ],
    );

    let out = broker.read(&["leads.normalised", "sync.dlq", "sync.audit"], 10, Duration::from_secs(60));
    let on = |t: &str| out.iter().filter(|m| m.topic == t).cloned().collect::<Vec<InMessage>>();
    let leads: Vec<NormalisedLead> = on("leads.normalised").iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let dls: Vec<DeadLetter> = on("sync.dlq").iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let audits: Vec<AuditRecord> = on("sync.audit").iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    assert_eq!((leads.len(), dls.len(), audits.len()), (2, 2, 6), "{out:?}");
    let keyed = on("leads.normalised").iter().zip(&leads).all(|(m, l)| m.key_str().as_deref() == Some(l.tenant_id.as_str()));
    assert!(keyed, "keyed by tenant: {out:?}");

    let l1 = leads.iter().find(|l| l.lead_id == "l1").expect("l1 normalised");
    assert_eq!(
        (l1.email.as_deref(), l1.phone_e164.as_deref(), l1.country.as_deref(), l1.full_name.as_deref()),
        (Some("jane.doe@customer.example"), Some("+14155552671"), Some("US"), Some("Jane Doe"))
    );
    assert_eq!(l1.attribution.form_id.as_deref(), Some("demo-request"));
    let l2 = leads.iter().find(|l| l.lead_id == "l2").expect("l2 goes on with its phone");
    assert_eq!((l2.email.as_deref(), l2.phone_e164.as_deref(), l2.country.as_deref()), (None, Some("+4930901820"), Some("DE")));
    assert_eq!(l2.dropped_fields.iter().map(|d| d.field.as_str()).collect::<Vec<_>>(), ["email"]);

    let keyless_dl = dls.iter().find(|d| d.call_id.as_deref() == Some("l3")).expect("l3 dead-lettered");
    assert_eq!(
        (keyless_dl.reason, keyless_dl.kind, keyless_dl.source_topic.as_str()),
        (DlqReason::Validation, Some(ActivityKind::Lead), "leads.raw")
    );
    assert!(keyless_dl.detail.contains("needs a valid email or a valid phone"), "{}", keyless_dl.detail);
    assert!(!keyless_dl.detail.contains("jane@@"), "masked: {}", keyless_dl.detail);
    let held: LeadEvent = codec::decode(&keyless_dl.payload).unwrap();
    assert_eq!(held, keyless, "the payload is the original, for replay once fixed");
    assert!(dls.iter().any(|d| d.reason == DlqReason::SchemaInvalid && d.detail.contains("not a LeadEvent")), "{dls:?}");
    assert!(dls.iter().all(|d| !matches!(d.call_id.as_deref(), Some("l4" | "l5"))), "a refusal is no dead letter: {dls:?}");
    assert_eq!(audited_outcome(&audits, "l5"), Some(AuditOutcome::Skipped), "skipped before its tenant is looked up");

    let audited = |id: &str| audits.iter().find(|a| a.call_id.as_deref() == Some(id)).unwrap_or_else(|| panic!("{id} audited"));
    assert_eq!((audited("l1").kind, audited("l1").outcome), (Some(ActivityKind::Lead), AuditOutcome::Succeeded));
    assert_eq!(audited("l2").attributes.get("dropped_fields").map(String::as_str), Some("email"));
    let skip = audited("l4");
    assert_eq!((skip.outcome, skip.kind), (AuditOutcome::Skipped, Some(ActivityKind::Lead)));
    assert!(skip.detail.contains("refused processing"), "{}", skip.detail);
    assert!(!skip.attributes.contains_key(crm_common::lookups::ATTRIBUTE), "no lookup names for a person who refused: {skip:?}");
    assert!(audited("l1").attributes.contains_key(crm_common::lookups::ATTRIBUTE), "found by email and phone");
    assert!(audits.iter().all(|a| !a.detail.contains("jane.doe") && !a.detail.contains("4155552671")), "{audits:?}");
}

/// Confluent-framed input (`00` + a Schema Registry id, then the datum), for producers whose
/// serializer registered crm-sync's schemas: the ids configured in CONFLUENT_SCHEMA_IDS are
/// read with the schema each names; any other id, or an id registered for another record,
/// is dead-lettered SCHEMA_INVALID with its original bytes and the id in the reason.
#[test]
fn confluent_framed_events_are_read_for_configured_ids() {
    use crm_common::fingerprint::fingerprint_hex;
    use crm_common::schemas::{RecordType, Registry};
    let broker = Broker::start(1);
    let tenants = TempFile::new("tenants.toml", TENANTS);
    let fp = |r| fingerprint_hex(&Registry::global().current(r).fingerprint);
    let ids = format!("7={},8={}", fp(RecordType::CallEvent), fp(RecordType::EmailEvent));
    let _normaliser = broker.service("normaliser", &[("TENANTS_CONFIG", tenants.path()), ("CONFLUENT_SCHEMA_IDS", ids.as_str())]);
    let framed = |id: u8, ev: &CallEvent| {
        let mut b = vec![0, 0, 0, 0, id];
        b.extend_from_slice(&codec::encode(ev).unwrap()[10..]);
        ("acme".to_string(), b, vec![])
    };
    let ok = call("acme", "cf-1", CallDirection::Inbound, "(415) 555-2671", "+1 650 253 0000", None);
    let inputs = vec![framed(7, &ok), framed(9, &ok), framed(8, &ok)];
    broker.produce("calls.raw", &inputs);
    let out = broker.read(&["calls.normalised", "sync.dlq"], 3, Duration::from_secs(60));
    let normalised: Vec<NormalisedCall> =
        out.iter().filter(|m| m.topic == "calls.normalised").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    assert_eq!(normalised.len(), 1, "{out:?}");
    assert_eq!((normalised[0].call_id.as_str(), normalised[0].from_e164.as_str()), ("cf-1", "+14155552671"));
    let mut dead: Vec<DeadLetter> =
        out.iter().filter(|m| m.topic == "sync.dlq").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    dead.sort_by_key(|d| d.source_offset);
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.reason == DlqReason::SchemaInvalid));
    assert!(dead[0].detail.contains("Confluent schema id 9"), "{}", dead[0].detail);
    assert_eq!(dead[0].payload, inputs[1].1, "the original bytes, for replay once the id is configured");
    assert!(dead[1].detail.contains("EmailEvent") || dead[1].detail.contains("Email"), "{}", dead[1].detail);
}
