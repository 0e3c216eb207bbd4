//! The HubSpot writer as a separate process, against the dev broker, the machine's Redis and
//! crm-sim: the writer suite every connector passes (tests/harness/writer_suite.rs), then
//! the runtime's own behaviour, shown once on HubSpot: retries running out, a full lane's
//! messages left in Kafka and read again (one tenant, then many), and a rebalance to a second
//! replica.

use crm_common::events::*;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::writer::{block_bucket, unblock_bucket, wait_for};
use crm_sync_tests::writer_suite::{outcomes, HUBSPOT};
use crm_sync_tests::{Broker, Proc, RedisPrefix, TempFile};
use serde_json::json;
use std::time::Duration;

crm_sync_tests::writer_suite!(HUBSPOT);
crm_sync_tests::activity_suite!(HUBSPOT);
crm_sync_tests::timeline_suite!(HUBSPOT);
crm_sync_tests::lead_suite!(crm_sync_tests::lead_suite::HUBSPOT_LEADS);

fn writer(broker: &Broker, tenants: &TempFile, prefix: &RedisPrefix, extra: &[(&str, &str)]) -> Proc {
    HUBSPOT.writer(broker, tenants, prefix, &["acme", "globex"], extra)
}

#[test]
fn transient_failures_past_the_retry_limit_are_dead_lettered_as_retries_exhausted() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    HUBSPOT.account(&sim, "acme", json!({}));
    let tenants = HUBSPOT.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    sim.fault("hubspot", "acme", json!({"kind": "503", "endpoint": "batch/create"}));
    let w = writer(
        &broker,
        &tenants,
        &prefix,
        &[("WRITER_RETRY_LIMIT", "2s"), ("WRITER_RETRY_BASE", "50ms"), ("WRITER_RETRY_MAX_WAIT", "300ms")],
    );
    broker.produce("crm.writes.hubspot", &[HUBSPOT.request("acme", "r1", 1)]);
    let (f, dlq, all) = outcomes(&broker, 1, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1, "{f:?}");
    assert_eq!(dlq[0].reason, DlqReason::RetriesExhausted);
    assert_eq!(dlq[0].crm_status, Some(503));
    // HubSpot enforces no key on calls: a create that met a 503 may have been applied, so
    // it is read back (search) before each retry, never resent blindly.
    let creates = all.iter().filter(|a| a.operation.ends_with("/calls/batch/create")).count();
    let reads = all.iter().filter(|a| a.operation.ends_with("/calls/search")).count();
    assert!(
        creates >= 2 && reads >= creates,
        "retried before giving up, reading back before each retry: {creates} creates, {reads} searches"
    );
    let retries = all.iter().filter(|a| a.outcome == AuditOutcome::Retrying).count();
    assert!(retries >= 2, "each retry is audited: {retries}");
    // Replayable: the claim stays "maybe applied", so a replay looks the key up and, not
    // finding it, creates it once HubSpot recovers.
    sim.admin("DELETE", "/accounts/hubspot/acme/faults", None);
    broker.produce("crm.writes.hubspot", &[HUBSPOT.request("acme", "r1", 1)]);
    let (f, _, _) = outcomes(&broker, 2, Duration::from_secs(60));
    assert!(f.iter().any(|a| a.outcome == AuditOutcome::Succeeded), "{f:?}");
    assert_eq!(HUBSPOT.keys(&sim, "acme").len(), 1);
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("writer-hubspot", "crm.writes.hubspot") == 2);
    assert!(w.terminate().success());
}

/// One tenant's 60 calls against a lane of 10 and a blocked bucket: the rest are left in
/// Kafka and handed on by passes as the lane drains; nothing lost, nothing twice.
#[test]
fn a_full_lane_leaves_its_messages_in_kafka_and_reads_them_again_without_losing_anything() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    HUBSPOT.account(&sim, "acme", json!({}));
    let tenants = HUBSPOT.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    block_bucket(&prefix, "acme", "hubspot", Duration::from_secs(4));
    let mut w = writer(&broker, &tenants, &prefix, &[("WRITER_LANE_MAX", "10")]);
    let inputs: Vec<_> = (0..60).map(|i| HUBSPOT.request("acme", &format!("p{i}"), 1)).collect();
    broker.produce("crm.writes.hubspot", &inputs);
    wait_for("messages left in Kafka", Duration::from_secs(20), || w.log_text().contains("left in Kafka"));
    wait_for("every call", Duration::from_secs(60), || HUBSPOT.keys(&sim, "acme").len() == 60);
    assert!(HUBSPOT.keys(&sim, "acme").values().all(|&(t, l)| t == 1 && l == 1));
    wait_for("the backlog emptied", Duration::from_secs(10), || w.log_text().contains("backlog empty"));
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
        HUBSPOT.account(&sim, t, json!({}));
        // Slow HubSpot a little so work is in flight when the group rebalances.
        sim.fault("hubspot", t, json!({"kind": "latency", "latency_ms": 150, "endpoint": "batch/create"}));
    }
    let tenants = HUBSPOT.tenants(&sim, &names, "");
    let prefix = RedisPrefix::new("writer");
    let secrets = [("INITECH_HUBSPOT_TOKEN", "tok-initech-hubspot"), ("UMBRELLA_HUBSPOT_TOKEN", "tok-umbrella-hubspot")];
    let a = writer(&broker, &tenants, &prefix, &secrets);
    let inputs: Vec<_> = (0..200).map(|i| HUBSPOT.request(names[i % 4], &format!("r{i}"), 1)).collect();
    let mut b = None;
    for (n, chunk) in inputs.chunks(8).enumerate() {
        broker.produce("crm.writes.hubspot", chunk);
        if n == 8 {
            // Mid-stream, a second replica joins the group and takes half the partitions.
            b = Some(writer(&broker, &tenants, &prefix, &secrets));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = || names.iter().map(|t| HUBSPOT.keys(&sim, t).len()).sum::<usize>();
    wait_for("every call", Duration::from_secs(90), || total() == 200);
    for t in names {
        assert!(HUBSPOT.keys(&sim, t).values().all(|&(n, l)| n == 1 && l == 1), "{t}: {:?}", HUBSPOT.keys(&sim, t));
    }
    wait_for("offsets committed", Duration::from_secs(30), || broker.committed("writer-hubspot", "crm.writes.hubspot") == 200);
    let log_b = b.as_ref().unwrap().log_text();
    assert!(log_b.contains("partitions assigned"), "the second replica took partitions: {log_b}");
    assert!(a.terminate().success());
    assert!(b.unwrap().terminate().success());
}

#[test]
fn unreadable_users_leave_actors_unmapped_not_writes_failed() {
    crm_sync_tests::timeline_suite::unreadable_users_leave_actors_unmapped_not_writes_failed(&HUBSPOT, "crm.objects.owners.read")
}

/// Many tenants through the backlog at once: 40 tenants × 8 calls, interleaved on one
/// partition, lanes of 2 and 12 held in all, so most of every tenant's calls are left in
/// Kafka and handed on by many passes, some of them over the same offsets. Every call is
/// written once, and each tenant's in the order produced.
#[test]
fn many_tenants_handed_on_by_many_passes_lose_nothing_and_keep_their_order() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    let names: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    let ids: Vec<&str> = names.iter().map(String::as_str).collect();
    for t in &ids {
        HUBSPOT.account(&sim, t, json!({}));
    }
    let tenants = HUBSPOT.tenants(&sim, &ids, "");
    let prefix = RedisPrefix::new("writer");
    let w = HUBSPOT.writer(&broker, &tenants, &prefix, &ids, &[("WRITER_LANE_MAX", "2"), ("WRITER_MAX_BUFFERED", "12")]);
    let per = 8;
    let mut inputs: Vec<_> = (0..per).flat_map(|i| ids.iter().map(move |t| HUBSPOT.request(t, &format!("c{i}"), 1))).collect();
    // A message that is no write request, among the left ones: dead-lettered when first read,
    // stepped over by every pass.
    inputs.insert(inputs.len() / 2, ("t05".to_string(), b"not avro".to_vec(), vec![]));
    broker.produce("crm.writes.hubspot", &inputs);
    let (finals, dlq, _) = outcomes(&broker, inputs.len(), Duration::from_secs(120));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].reason, DlqReason::SchemaInvalid);
    let calls = ids.len() * per;
    let written = finals.iter().filter(|a| a.outcome == AuditOutcome::Succeeded).count();
    assert_eq!(written, calls, "every call written");
    for t in &ids {
        let k = HUBSPOT.keys(&sim, t);
        assert_eq!(k.len(), per, "{t}: {k:?}");
        assert!(k.values().all(|&(n, l)| n == 1 && l == 1), "{t}: {k:?}");
        let order: Vec<i64> =
            finals.iter().filter(|a| a.tenant_id == *t && a.outcome == AuditOutcome::Succeeded).map(|a| a.input_offset).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{t}'s calls in order: {order:?}");
    }
    wait_for("offsets committed", Duration::from_secs(20), || {
        broker.committed("writer-hubspot", "crm.writes.hubspot") == inputs.len() as i64
    });
    let log = w.log_text();
    assert!(log.contains("left in Kafka") && log.contains("backlog empty"), "{log}");
    assert!(w.terminate().success());
}

/// Retention deletes messages left in Kafka before a pass reads them again (here the dev
/// broker's own size cap: it keeps 5 MiB per partition and drops the oldest batches past
/// it). The pass, sent to the log's start, would wait for the deleted offset for ever and
/// hold the tenant's later calls and the partition's commits with it; instead the writer
/// asks the broker where the log starts, says at error level which tenant's messages were
/// deleted from where, and goes on from there.
#[test]
fn a_pass_whose_left_messages_were_deleted_says_so_and_goes_on() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    HUBSPOT.account(&sim, "acme", json!({}));
    let tenants = HUBSPOT.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer");
    block_bucket(&prefix, "acme", "hubspot", Duration::from_secs(300));
    let w = writer(&broker, &tenants, &prefix, &[("WRITER_LANE_MAX", "2"), ("WRITER_PASS_STALL", "2s")]);
    let topic = "crm.writes.hubspot";
    let first: Vec<_> = (0..10).map(|i| HUBSPOT.request("acme", &format!("a{i}"), 1)).collect();
    broker.produce(topic, &first);
    wait_for("acme's calls left in Kafka", Duration::from_secs(20), || w.log_text().contains("left in Kafka"));
    std::thread::sleep(Duration::from_secs(1));
    // 6.4 MiB of messages that are no write request (dead-lettered as they are read):
    // incompressible, so the broker drops the oldest batches, acme's left calls among them.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let junk: Vec<_> = (0..100)
        .map(|_| {
            let bytes = (0..64 * 1024)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            ("junk".to_string(), bytes, vec![])
        })
        .collect();
    broker.produce(topic, &junk);
    let later: Vec<_> = (0..3).map(|i| HUBSPOT.request("acme", &format!("b{i}"), 1)).collect();
    broker.produce(topic, &later);
    unblock_bucket(&prefix, "acme", "hubspot");
    let key = |c: &str| idempotency_key("acme", c, Crm::Hubspot);
    wait_for("acme's calls produced after the deleted ones", Duration::from_secs(60), || {
        let k = HUBSPOT.keys(&sim, "acme");
        ["b0", "b1", "b2"].iter().all(|c| k.contains_key(&key(c)))
    });
    let k = HUBSPOT.keys(&sim, "acme");
    assert!(k.contains_key(&key("a0")) && k.contains_key(&key("a1")), "the two in the lane were written: {k:?}");
    assert_eq!(k.len(), 5, "the deleted calls could not be written: {k:?}");
    assert!(k.values().all(|&(n, l)| n == 1 && l == 1), "{k:?}");
    let log = w.log_text();
    let said = log.lines().find(|l| l.contains("were deleted (retention)")).unwrap_or_else(|| panic!("the loss is reported: {log}"));
    assert!(said.contains("ERROR") && said.contains("acme") && said.contains("offsets 2.."), "{said}");
    let total = (first.len() + junk.len() + later.len()) as i64;
    wait_for("offsets committed past the gap", Duration::from_secs(30), || broker.committed("writer-hubspot", topic) == total);
    assert!(w.terminate().success());
}
