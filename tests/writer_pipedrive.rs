//! The Pipedrive writer as a separate process against the dev broker, the machine's Redis and
//! crm-sim: the writer suite (tests/harness/writer_suite.rs) for Pipedrive, then what only
//! Pipedrive's key lookup has: a listing cut short by its page cap.

use crm_common::events::*;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::writer_suite::{outcomes, PIPEDRIVE};
use crm_sync_tests::{Broker, RedisPrefix, MACHINE_REDIS};
use serde_json::json;
use std::time::Duration;

crm_sync_tests::writer_suite!(PIPEDRIVE);
crm_sync_tests::activity_suite!(PIPEDRIVE);
crm_sync_tests::timeline_suite!(PIPEDRIVE);

/// Recovery lists the activities changed since the lost write was claimed; with more than
/// the listing's cap (40 pages of 500), a key not seen is not known to be absent. The
/// writer must not create: it dead-letters the write still "maybe applied" and keeps the
/// claim, so a replay looks again.
#[test]
fn a_recovery_listing_cut_short_is_unknown_not_absent() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    let fillers: Vec<_> =
        (0..20_050).map(|i| json!({"subject": format!("other call {i}"), "type": "call", "note": "made by someone else"})).collect();
    PIPEDRIVE.account(&sim, "acme", json!({"objects": {"activities": fillers}}));
    let tenants = PIPEDRIVE.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("writer-pages");
    // A write of p1 was claimed by a writer that died; its lease ran out long ago.
    let key = format!("{}:{{acme}}:claim:{}", prefix.0, idempotency_key("acme", "p1", Crm::Pipedrive));
    let mut c = redis::Client::open(MACHINE_REDIS).unwrap().get_connection().unwrap();
    let at = crm_common::clock::now_ms() - 10_000;
    redis::cmd("HSET")
        .arg(&key)
        .arg("owner")
        .arg("writer-dead")
        .arg("until")
        .arg(1)
        .arg("version")
        .arg(1)
        .arg("at")
        .arg(at)
        .query::<i64>(&mut c)
        .unwrap();
    let w = PIPEDRIVE.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    broker.produce(&PIPEDRIVE.topic(), &[PIPEDRIVE.request("acme", "p1", 1)]);
    let (_, dlq, all) = outcomes(&broker, 1, Duration::from_secs(120));
    let lists = all.iter().filter(|a| a.operation == "GET /api/v2/activities").count();
    assert_eq!(lists, 40, "the listing read its 40 pages");
    assert!(all.iter().all(|a| a.operation != "POST /api/v2/activities"), "a create went out after a listing that did not reach its end");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].reason, DlqReason::RetriesExhausted);
    assert!(dlq[0].detail.contains("40 pages"), "{}", dlq[0].detail);
    let owner: Option<String> = redis::cmd("HGET").arg(&key).arg("owner").query(&mut c).unwrap();
    assert!(owner.is_some(), "the claim stays: the write may be in Pipedrive");
    assert!(PIPEDRIVE.keys(&sim, "acme").is_empty());
    assert!(w.terminate().success());
}

#[test]
fn unreadable_users_leave_actors_unmapped_not_writes_failed() {
    crm_sync_tests::timeline_suite::unreadable_users_leave_actors_unmapped_not_writes_failed(&PIPEDRIVE, "users:read")
}
crm_sync_tests::lead_suite!(crm_sync_tests::lead_suite::PIPEDRIVE_LEADS);
