//! Bad input through the whole pipeline: malformed, unknown-schema, oversized and hostile
//! events on calls.raw (and undecodable ones straight onto the later topics), between good
//! calls. Nothing may panic or stop: every bad event is one dead letter with its reason,
//! stored as-is (hostile strings included) by the audit-sink; every good call reaches
//! crm-sim once; and the normaliser's memory stays small through it all. (Whether a length
//! prefix claiming hundreds of megabytes is refused before allocating is checked in
//! crm-common's fuzz tests: such an allocation is zeroed lazily and never shows in RSS.)

use crm_common::codec;
use crm_common::events::fixtures::{normalised_call, raw_call};
use crm_common::events::*;
use crm_common::schemas::{RecordType, Registry};
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::postgres::PrivateDb;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::writer_suite::HUBSPOT;
use crm_sync_tests::{Broker, Msg, Proc, RedisPrefix, MACHINE_REDIS};
use serde_json::json;
use std::time::Duration;

/// Avro's long: zigzag, then 7 bits a byte.
fn varint(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = vec![];
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn framed(rt: RecordType, datum: &[u8]) -> Vec<u8> {
    let mut b = vec![0xC3, 0x01];
    b.extend_from_slice(&Registry::global().current(rt).fingerprint);
    b.extend_from_slice(datum);
    b
}

/// Peak resident memory of a process, in MiB (VmHWM).
fn peak_rss_mib(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

struct Bad {
    what: &'static str,
    topic: &'static str,
    key: String,
    payload: Vec<u8>,
    stage: Stage,
    reason: DlqReason,
}

#[test]
fn bad_events_each_become_one_dead_letter_and_good_ones_are_unaffected() {
    let case = &HUBSPOT;
    let broker = Broker::start(2);
    let sim = CrmSim::start();
    case.account(&sim, "acme", json!({}));
    let tenants = case.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("bad-input");
    let db = PrivateDb::new("bad_input");
    let env = [("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", MACHINE_REDIS), ("REDIS_KEY_PREFIX", prefix.0.as_str())];
    let mut normaliser = broker.service("normaliser", &env);
    let mut deduper = broker.service("deduper", &env);
    let mut writer = case.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    let mut sink = broker.service(
        "audit-sink",
        &[("DATABASE_URL", db.url.as_str()), ("PIPELINE_COMMIT_INTERVAL_MS", "100"), ("TENANTS_CONFIG", "/dev/null")],
    );

    let call = |f: &dyn Fn(&mut CallEvent)| {
        let mut ev = raw_call("acme", "x", 7);
        f(&mut ev);
        codec::encode(&ev).unwrap()
    };
    let good_bytes = call(&|_| {});
    let bad = |what, topic, payload: Vec<u8>, stage, reason| Bad { what, topic, key: "acme".into(), payload, stage, reason };
    let (raw, norm, writes) = ("calls.raw", "calls.normalised", "crm.writes.hubspot");
    use DlqReason::*;
    use Stage::*;
    // A string claimed to be 400 MB long, with nothing behind the claim.
    let mut claims_400mb = varint(4).into_iter().chain(*b"acme").collect::<Vec<u8>>();
    claims_400mb.extend(varint(400_000_000));
    let mut cases = vec![
        bad("not Avro at all", raw, b"hello, this is not avro".to_vec(), Normaliser, SchemaInvalid),
        bad("empty", raw, vec![], Normaliser, SchemaInvalid),
        bad("truncated", raw, good_bytes[..good_bytes.len() / 2].to_vec(), Normaliser, SchemaInvalid),
        bad("unknown schema fingerprint", raw, [&[0xC3, 0x01][..], &[0x11; 8], &good_bytes[10..]].concat(), Normaliser, SchemaInvalid),
        bad("unknown Confluent schema id", raw, [&[0x00, 0, 0, 0, 7][..], &good_bytes[10..]].concat(), Normaliser, SchemaInvalid),
        bad("another record type", raw, codec::encode(&normalised_call("acme", "n1", 1)).unwrap(), Normaliser, SchemaInvalid),
        bad("trailing garbage", raw, [&good_bytes[..], b"\x00\x01junk"].concat(), Normaliser, SchemaInvalid),
        bad("oversized (300 KB of notes)", raw, call(&|e| e.notes = Some("n".repeat(300_000))), Normaliser, Validation),
        bad(
            "a newline forging a log line in the call id",
            raw,
            call(&|e| e.call_id = "c1\n2026-11-23T00:00:00Z INFO all good".into()),
            Normaliser,
            Validation,
        ),
        bad("an empty call id", raw, call(&|e| e.call_id = String::new()), Normaliser, Validation),
        bad("a 300-byte call id", raw, call(&|e| e.call_id = "x".repeat(300)), Normaliser, Validation),
        bad("a script for a number", raw, call(&|e| e.from_number = "<script>alert(1)</script>".into()), Normaliser, InvalidPhone),
        bad("garbage on calls.normalised", norm, b"\xc3\x01garbage".to_vec(), Deduper, SchemaInvalid),
        bad("garbage on crm.writes.hubspot", writes, b"{\"json\": \"instead\"}".to_vec(), Stage::Writer, SchemaInvalid),
    ];
    for i in 0..5 {
        cases.push(bad("a claimed 400 MB string", raw, framed(RecordType::CallEvent, &claims_400mb), Normaliser, SchemaInvalid));
        cases.last_mut().unwrap().what = if i == 0 { "a claimed 400 MB string" } else { "another claimed 400 MB string" };
    }
    let injection = "acme'; DROP TABLE audit; --";
    let rtl = "\u{202e}emca";
    for (what, tenant) in [("an SQL injection for a tenant", injection), ("a right-to-left override for a tenant", rtl)] {
        let mut ev = raw_call(tenant, "c-hostile", 1);
        ev.tenant_id = tenant.into();
        cases.push(Bad {
            what,
            topic: raw,
            key: tenant.into(),
            payload: codec::encode(&ev).unwrap(),
            stage: Normaliser,
            reason: TenantNotConfigured,
        });
    }

    // Good calls around them, one with hostile-looking but valid text that must arrive as is.
    let notes = "Rückruf „bitte“ 📞 \u{202e}RTL\u{202c} <b>bold</b> '; DROP TABLE audit; --";
    let goods: Vec<Msg> = (0..5)
        .map(|i| ("acme".to_string(), codec::encode(&raw_call("acme", &format!("g{i}"), i)).unwrap(), vec![]))
        .chain(std::iter::once((
            "acme".to_string(),
            call(&|e| {
                e.call_id = "g-unicode".into();
                e.notes = Some(notes.into());
            }),
            vec![],
        )))
        .collect();
    broker.produce(raw, &goods[..3]);
    for c in &cases {
        broker.produce(c.topic, &[(c.key.clone(), c.payload.clone(), vec![])]);
    }
    broker.produce(raw, &goods[3..]);
    // The audit-sink's own input: an undecodable audit record is kept in sink_rejects.
    broker.produce("sync.audit", &[("acme".into(), b"not an audit record".to_vec(), vec![])]);

    wait_for("every good call written", Duration::from_secs(60), || case.keys(&sim, "acme").len() == goods.len());
    let want = cases.len() as i64;
    assert_eq!(db.wait_count("SELECT count(*) FROM dlq", want, Duration::from_secs(60)), want, "every dead letter stored");
    std::thread::sleep(Duration::from_secs(2));

    // One dead letter per bad event, with its stage and reason.
    let letters: Vec<DeadLetter> = broker
        .reader(&["sync.dlq"])
        .read_until(Duration::from_secs(2), |_| false)
        .iter()
        .map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(letters.len(), cases.len(), "{:#?}", letters.iter().map(|d| (&d.reason, &d.detail)).collect::<Vec<_>>());
    for c in &cases {
        let found: Vec<&DeadLetter> = letters
            .iter()
            .filter(|d| {
                d.source_topic == c.topic
                    && c.payload.starts_with(&d.payload)
                    && d.payload.len() == c.payload.len().min(crm_common::emit::MAX_DLQ_PAYLOAD)
            })
            .collect();
        assert!(!found.is_empty(), "{}: no dead letter", c.what);
        assert!(
            found.iter().all(|d| (d.stage, d.reason) == (c.stage, c.reason)),
            "{}: {:?}",
            c.what,
            found.iter().map(|d| (d.stage, d.reason, &d.detail)).collect::<Vec<_>>()
        );
        assert!(found.iter().all(|d| !d.detail.is_empty()), "{}: a reason in words", c.what);
    }
    let oversized = letters.iter().find(|d| d.detail.contains("oversized")).expect("the oversized event");
    assert!(oversized.detail.contains("MAX_EVENT_BYTES"), "{}", oversized.detail);
    let forged = letters.iter().find(|d| d.detail.contains("all good")).expect("the forged log line");
    assert!(!forged.detail.contains('\n'), "details quote ids, never carry their newlines: {:?}", forged.detail);

    // Stored as they were: the injection is a tenant id like any other.
    assert_eq!(db.count(&format!("SELECT count(*) FROM dlq WHERE tenant_id = '{}'", injection.replace('\'', "''"))), 1);
    assert_eq!(db.count(&format!("SELECT count(*) FROM dlq WHERE tenant_id = '{rtl}'")), 1);
    assert!(db.count("SELECT count(*) FROM audit") > 0, "the audit table is still there");
    assert_eq!(db.wait_count("SELECT count(*) FROM sink_rejects", 1, Duration::from_secs(20)), 1, "the undecodable audit record is kept");

    // The good calls arrived once each, the hostile-looking notes intact.
    let keys = case.keys(&sim, "acme");
    assert!(keys.values().all(|&(total, live)| total == 1 && live == 1), "{keys:?}");
    let records = sim.records("hubspot", "acme", "calls");
    assert!(records.iter().any(|r| r["fields"].to_string().contains("Rückruf „bitte“ 📞")), "the unicode notes reached HubSpot");

    // Nothing crashed or grew.
    let peak = peak_rss_mib(&normaliser);
    assert!(peak < 200, "the normaliser peaked at {peak} MiB");
    for (name, p) in [("normaliser", &mut normaliser), ("deduper", &mut deduper), ("writer", &mut writer), ("audit-sink", &mut sink)] {
        assert!(p.alive(), "{name} is still running");
        let log = p.log_text();
        assert!(!log.contains("panicked"), "{name} panicked: {log}");
    }
    for p in [normaliser, deduper, writer, sink] {
        assert!(p.terminate().success());
    }
}
