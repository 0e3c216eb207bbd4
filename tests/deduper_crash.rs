//! SIGKILL the deduper at random points over several runs, then let a last run finish.
//! The crash rule (DESIGN §4): a mark must never cause loss. So, after all the kills:
//! - zero lost: every call's latest version reached every CRM its tenant connects;
//! - true repeats (and stale versions) were still suppressed, never written, and audited
//!   as DUPLICATE, however often the deduper died around them;
//! - per (call, CRM) the versions written never go backwards.
//!
//! Redelivered duplicates of a version are at-least-once delivery and are counted.

use crm_common::codec;
use crm_common::events::*;
use crm_sync_tests::{normalised_call, Broker, RedisPrefix, TempFile, MACHINE_REDIS};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const CALLS: usize = 4000;
const TENANTS: usize = 12;
const KILLS: usize = 4;

/// Call i's latest version: 1, 2 or 3.
fn versions(i: usize) -> i64 {
    1 + (i % 3) as i64
}

fn crms(tenant: usize) -> Vec<&'static str> {
    if tenant.is_multiple_of(2) {
        vec!["hubspot", "pipedrive"]
    } else {
        vec!["hubspot"]
    }
}

#[test]
fn no_loss_and_repeats_suppressed_across_repeated_sigkill() {
    let broker = Broker::start(8);
    let config: String = (0..TENANTS)
        .map(|t| {
            let mut s = format!("[tenants.t{t}]\ndefault_region = \"US\"\n");
            for c in crms(t) {
                s += &format!("[tenants.t{t}.crms.{c}]\nplan = \"pro\"\ncredentials_secret = \"T{t}_{c}\"\n");
            }
            s
        })
        .collect();
    let tenants = TempFile::new("tenants.toml", &config);
    let prefix = RedisPrefix::new("deduper-crash");

    // Round r carries version r of every call that has one; exact repeats of a quarter of
    // those follow in the next round, and stale version-1 copies come last.
    let event = |i: usize, v: i64, copy: &str| {
        let mut c = normalised_call(&format!("t{}", i % TENANTS), &format!("c{i}"), v);
        c.attributes.insert("copy".into(), copy.into());
        (c.tenant_id.clone(), codec::encode(&c).unwrap(), vec![])
    };
    let mut inputs = vec![];
    let mut copies = 0;
    for r in 1..=3 {
        let mut repeats = vec![];
        for i in (0..CALLS).filter(|&i| versions(i) >= r) {
            inputs.push(event(i, r, "orig"));
            if (i + r as usize).is_multiple_of(4) {
                repeats.push(event(i, r, "repeat"));
            }
        }
        copies += repeats.len();
        inputs.extend(repeats);
    }
    for i in (0..CALLS).filter(|&i| versions(i) >= 2 && i % 10 == 0) {
        inputs.push(event(i, 1, "stale"));
        copies += 1;
    }
    broker.produce("calls.normalised", &inputs);
    let total = inputs.len();
    let expected_latest: usize = (0..CALLS).map(|i| crms(i % TENANTS).len()).sum();

    let env = [
        ("TENANTS_CONFIG", tenants.path()),
        ("REDIS_URL", MACHINE_REDIS),
        ("REDIS_KEY_PREFIX", prefix.0.as_str()),
        ("PIPELINE_BATCH", "50"),
        ("PIPELINE_COMMIT_INTERVAL_MS", "100"),
    ];
    // Progress is watched by reading the HubSpot topic as it fills (prompter than polling
    // watermarks), so each kill lands at a random point of the stream.
    let watch = broker.reader(&["crm.writes.hubspot"]);
    let mut on_topic = 0i64;
    let hubspot_unique: i64 = (0..CALLS).map(versions).sum();
    let mut mid_stream = 0;
    for round in 0..KILLS {
        let proc = broker.service("deduper", &env);
        // Somewhere in the next 100..1200 HubSpot writes.
        let target = on_topic + 100 + (rand::random::<u64>() % 1100) as i64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while on_topic < target {
            assert!(Instant::now() < deadline, "round {round}: the deduper made no progress");
            let want = (target - on_topic) as usize;
            on_topic += watch.read_until(Duration::from_millis(50), |b| b.len() >= want).len() as i64;
        }
        proc.kill9();
        on_topic += watch.read_until(Duration::from_millis(300), |_| false).len() as i64;
        if on_topic < hubspot_unique {
            mid_stream += 1;
        }
        eprintln!("round {round}: SIGKILL with {on_topic} HubSpot writes on the topic ({hubspot_unique} unique expected)");
    }
    assert!(mid_stream >= 3, "only {mid_stream} kills landed mid-stream");

    // Which input offsets are copies, read back from the input topic.
    let copy_inputs: HashSet<(i32, i64)> = broker
        .read(&["calls.normalised"], total, Duration::from_secs(60))
        .iter()
        .filter(|m| {
            let c: NormalisedCall = codec::decode(m.payload.as_deref().unwrap()).unwrap();
            c.attributes["copy"] != "orig"
        })
        .map(|m| (m.partition, m.offset))
        .collect();
    assert_eq!(copy_inputs.len(), copies);

    let last = broker.service("deduper", &env);
    let out = broker.reader(&["crm.writes.hubspot", "crm.writes.pipedrive", "sync.audit"]);
    // (call, crm) → versions written, in topic order.
    let mut written: HashMap<(String, Crm), Vec<i64>> = HashMap::new();
    let mut leaked = vec![];
    let mut audited_copies: HashSet<(i32, i64)> = HashSet::new();
    let mut wrong_duplicates = vec![];
    let latest_done = |w: &HashMap<(String, Crm), Vec<i64>>| {
        w.iter().filter(|((c, _), vs)| vs.iter().max() == Some(&versions(c[1..].parse().unwrap()))).count()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while (latest_done(&written) < expected_latest || audited_copies.len() < copies) && Instant::now() < deadline {
        for m in out.read_until(Duration::from_secs(2), |b| b.len() >= 5000) {
            let p = m.payload.as_deref().unwrap();
            if m.topic == "sync.audit" {
                let a: AuditRecord = codec::decode(p).unwrap();
                if a.outcome == AuditOutcome::Duplicate {
                    if copy_inputs.contains(&(a.input_partition, a.input_offset)) {
                        audited_copies.insert((a.input_partition, a.input_offset));
                    } else {
                        // An original read again after a restart finds a newer version's
                        // mark (it was written before the crash): suppressing it is right.
                        // Suppressed against its own version or an older one, it is lost.
                        let marked: i64 = a.attributes["marked_version"].parse().unwrap();
                        if marked <= a.version.unwrap() {
                            wrong_duplicates.push(a);
                        }
                    }
                }
                continue;
            }
            let w: CrmWriteRequest = codec::decode(p).unwrap();
            if w.call.attributes["copy"] != "orig" {
                leaked.push((w.call_id.clone(), w.version, w.call.attributes["copy"].clone()));
            }
            written.entry((w.call_id, w.crm)).or_default().push(w.version);
        }
    }
    let status = last.terminate();
    assert!(status.success(), "graceful stop after SIGTERM: {status}");

    let mut lost = vec![];
    for i in 0..CALLS {
        for c in crms(i % TENANTS) {
            let crm: Crm = c.parse().unwrap();
            let got = written.get(&(format!("c{i}"), crm)).and_then(|v| v.iter().max().copied());
            if got != Some(versions(i)) {
                lost.push((i, c, got));
            }
        }
    }
    assert!(lost.is_empty(), "{} (call, CRM) pairs lost their latest version, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert!(leaked.is_empty(), "{} repeats were written, e.g. {:?}", leaked.len(), &leaked[..leaked.len().min(10)]);
    assert!(wrong_duplicates.is_empty(), "an original was suppressed as a repeat: {:?}", wrong_duplicates.first());
    assert_eq!(audited_copies.len(), copies, "every true repeat audited as DUPLICATE");
    let backwards: Vec<_> = written.iter().filter(|(_, vs)| vs.windows(2).any(|w| w[1] < w[0])).collect();
    assert!(backwards.is_empty(), "versions went backwards: {:?}", backwards.first());

    let writes: usize = written.values().map(Vec::len).sum();
    let distinct: usize = written.values().map(|vs| vs.iter().collect::<HashSet<_>>().len()).sum();
    eprintln!(
        "{KILLS} SIGKILLs over {total} inputs ({copies} repeats/stale): {writes} writes, {distinct} distinct (call, CRM, version), \
         {} redelivered duplicates, 0 lost, 0 repeats leaked",
        writes - distinct
    );
}
