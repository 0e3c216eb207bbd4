//! Shutdown is bounded: on SIGTERM every service exits within its grace period even when the
//! broker is gone (frozen: outputs in flight, commits and the group leave all waiting on it)
//! and Redis with it (the writer's lanes wait for Redis rather than lose a claim), leaving
//! uncommitted what it could not commit.

use crm_common::codec;
use crm_common::events::{CallDirection, CallEvent};
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::writer_suite::HUBSPOT;
use crm_sync_tests::{Broker, Msg, PrivateRedis, RedisPrefix};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn raw_call(tenant: &str, id: &str) -> Msg {
    let ev = CallEvent {
        tenant_id: tenant.into(),
        call_id: id.into(),
        source: "pbx".into(),
        version: 1,
        direction: CallDirection::Inbound,
        from_number: "+1 415 555 2671".into(),
        to_number: "+1 650 253 0000".into(),
        region_hint: None,
        started_at: crm_common::clock::now_ms() - 60_000,
        ended_at: None,
        duration_s: None,
        outcome: None,
        agent_id: "a".into(),
        agent_email: None,
        recording_url: None,
        notes: None,
        attributes: HashMap::new(),
    };
    (tenant.into(), codec::encode(&ev).unwrap(), vec![])
}

#[test]
fn every_service_exits_within_its_grace_period_when_the_broker_and_redis_are_gone() {
    let mut broker = Broker::start(2);
    let sim = CrmSim::start();
    HUBSPOT.account(&sim, "acme", serde_json::json!({}));
    let tenants = HUBSPOT.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("shutdown");
    let db_url = "postgres://postgres@127.0.0.1:5432/postgres";
    let grace = ("SHUTDOWN_GRACE", "8s");
    let mut redis = PrivateRedis::start();
    let redis_url = redis.url();
    let common = [("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", redis_url.as_str()), ("REDIS_KEY_PREFIX", prefix.0.as_str()), grace];
    let mut procs = vec![
        broker.service("normaliser", &common),
        broker.service("deduper", &common),
        broker.service("audit-sink", &[("DATABASE_URL", db_url), ("TENANTS_CONFIG", "/dev/null"), grace]),
        HUBSPOT.writer(&broker, &tenants, &prefix, &["acme"], &[grace, ("REDIS_URL", redis_url.as_str())]),
    ];
    for p in &procs {
        let started = Instant::now();
        while !p.log_text().contains("consuming") {
            assert!(started.elapsed() < Duration::from_secs(60), "{} did not start: {}", p.name, p.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Work in flight when the broker goes: calls keep coming until it dies, so every stage
    // holds outputs unacknowledged and offsets uncommitted.
    let producer = broker.producer();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..100 {
                    let (key, payload, _) = raw_call("acme", &format!("s{i}"));
                    let _ = producer.send(rdkafka::producer::BaseRecord::to("calls.raw").key(&key).payload(&payload));
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Every stage busy: the first group join alone takes seconds, so wait until calls
        // have come out at the end of the pipeline while more keep coming in.
        let started = Instant::now();
        while HUBSPOT.keys(&sim, "acme").len() < 50 {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the pipeline never got going: {}",
                procs.iter().map(|p| p.log_text()).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        // Gone as a frozen node is: connections open, nothing answers; Redis gone too.
        broker.freeze();
        redis.kill();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let t = Instant::now();
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    let deadline = Duration::from_secs(20);
    for p in procs.iter_mut() {
        while p.alive() {
            assert!(
                t.elapsed() < deadline,
                "{} still running {:?} after SIGTERM with its broker frozen and Redis gone (grace 8 s): {}",
                p.name,
                t.elapsed(),
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!("every service exited {:?} after SIGTERM, its broker gone", t.elapsed());
}
