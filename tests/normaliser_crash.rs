//! SIGKILL the normaliser mid-stream, several times, then let it finish: every input must
//! have its normalised output or its DLQ entry, and its audit record. Duplicates are allowed
//! (at-least-once) and reported; loss is not.

use crm_common::codec;
use crm_common::events::*;
use crm_sync_tests::{Broker, TempFile};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const INPUTS: usize = 20_000;
const KILLS: usize = 4;

#[test]
fn nothing_is_lost_across_repeated_sigkill() {
    let broker = Broker::start(3);
    let tenants = TempFile::new(
        "tenants.toml",
        "[tenants.t0]\ndefault_region = \"US\"\n[tenants.t1]\ndefault_region = \"GB\"\n[tenants.t2]\ndefault_region = \"DE\"\n[tenants.t3]\ndefault_region = \"FR\"\n",
    );
    let numbers = ["+1 415 555 2671", "020 7946 0958", "030 901820", "06 12 34 56 78"];
    let inputs: Vec<crm_sync_tests::Msg> = (0..INPUTS)
        .map(|i| {
            let t = i % 5; // t4 is not configured: TENANT_NOT_CONFIGURED
            let ev = CallEvent {
                tenant_id: format!("t{t}"),
                call_id: format!("c{i}"),
                source: "pbx".into(),
                version: 1,
                direction: CallDirection::Inbound,
                from_number: if i % 10 == 3 { "12".into() } else { numbers[t % 4].into() },
                to_number: numbers[t % 4].into(),
                region_hint: None,
                started_at: 1_767_225_600_000 + i as i64,
                ended_at: None,
                duration_s: None,
                outcome: None,
                agent_id: "a".into(),
                agent_email: None,
                recording_url: None,
                notes: None,
                attributes: HashMap::new(),
            };
            (ev.tenant_id.clone(), codec::encode(&ev).unwrap(), vec![])
        })
        .collect();
    broker.produce("calls.raw", &inputs);

    let env = [("TENANTS_CONFIG", tenants.path()), ("PIPELINE_BATCH", "50"), ("PIPELINE_COMMIT_INTERVAL_MS", "100")];
    let reader = broker.reader(&["calls.normalised"]);
    let mut kills_mid_stream = 0;
    for round in 0..KILLS {
        let before = reader.high_watermarks("calls.normalised").unwrap();
        let proc = broker.service("normaliser", &env);
        let deadline = Instant::now() + Duration::from_secs(60);
        while reader.high_watermarks("calls.normalised").unwrap() <= before {
            assert!(Instant::now() < deadline, "round {round}: normaliser made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 150));
        proc.kill9();
        let after = reader.high_watermarks("calls.normalised").unwrap();
        if after < (INPUTS as i64) * 3 / 5 {
            kills_mid_stream += 1;
        }
        eprintln!("round {round}: killed with {after} normalised outputs on the topic");
    }
    assert!(kills_mid_stream >= 2, "only {kills_mid_stream} kills landed mid-stream");

    // A last run finishes the stream; SIGTERM must then stop it cleanly.
    let last = broker.service("normaliser", &env);
    let out = broker.reader(&["calls.normalised", "sync.dlq", "sync.audit"]);
    let mut done_ids: HashMap<String, usize> = HashMap::new();
    let mut audited: HashSet<String> = HashSet::new();
    let mut results = 0usize;
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while (done_ids.len() < INPUTS || audited.len() < INPUTS) && Instant::now() < deadline {
        let batch = out.read_until(Duration::from_secs(2), |m| m.len() >= 5000);
        seen += batch.len();
        for m in batch {
            let p = m.payload.as_deref().unwrap();
            let id = match m.topic.as_str() {
                "calls.normalised" => codec::decode::<NormalisedCall>(p).unwrap().call_id,
                "sync.dlq" => codec::decode::<DeadLetter>(p).unwrap().call_id.unwrap(),
                _ => {
                    audited.insert(codec::decode::<AuditRecord>(p).unwrap().call_id.unwrap());
                    continue;
                }
            };
            results += 1;
            *done_ids.entry(id).or_default() += 1;
        }
    }
    let status = last.terminate();
    assert!(status.success(), "graceful stop after SIGTERM: {status}");
    let missing: Vec<usize> = (0..INPUTS).filter(|i| !done_ids.contains_key(&format!("c{i}"))).collect();
    assert!(missing.is_empty(), "{} inputs lost, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert_eq!(audited.len(), INPUTS, "every input audited");
    eprintln!("{KILLS} SIGKILLs: {INPUTS} inputs, {results} results ({} redelivered duplicates), {seen} messages read", results - INPUTS);
}
