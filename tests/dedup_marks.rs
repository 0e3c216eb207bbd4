//! The deduper's Redis marks against the machine's Redis: new, repeat, update, the
//! redelivered-marker rule that keeps a crash from losing an event, TTLs matching the window,
//! hash-tagged keys, and a clear error when Redis is unreachable. Each test uses its own key
//! prefix and deletes its keys.

use crm_common::dedup::{DedupStore, Mark, MarkRequest};
use crm_common::redis_conn::RedisTarget;
use redis::AsyncCommands;

const REDIS: &str = "redis://127.0.0.1:6379";

fn node(url: &str) -> RedisTarget {
    RedisTarget::Node(url.to_string())
}

fn req(call: &str, version: i64, input: &str) -> MarkRequest {
    MarkRequest { tenant_id: "acme".into(), call_id: call.into(), version, input: input.into(), window_ms: 60_000 }
}

async fn cleanup(prefix: &str) {
    let client = redis::Client::open(REDIS).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = c.keys(format!("{prefix}:*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = c.del(keys).await.unwrap();
    }
}

#[tokio::test]
async fn marks_decide_new_repeat_update_and_redelivery() {
    let prefix = format!("test-dedup-{}", uuid::Uuid::new_v4().simple());
    let store = DedupStore::connect(&node(REDIS), &prefix).await.expect("redis");
    let marks = store
        .mark_many(&[
            req("c1", 1, "calls.normalised/0/10"),
            req("c1", 1, "calls.normalised/0/11"), // a true repeat inside the window
            req("c1", 1, "calls.normalised/0/10"), // the marking input, delivered again
            req("c1", 2, "calls.normalised/0/12"), // a higher version
            req("c1", 1, "calls.normalised/0/13"), // an older version after the update
        ])
        .await
        .unwrap();
    assert_eq!(marks[0], Mark::New);
    assert_eq!(marks[1], Mark::Repeat { marked_version: 1, marked_by: "calls.normalised/0/10".into() });
    assert_eq!(marks[2], Mark::Redelivered);
    assert!(marks[2].emit());
    assert_eq!(marks[3], Mark::Update { previous_version: 1, previous_input: "calls.normalised/0/10".into() });
    assert_eq!(marks[4], Mark::Repeat { marked_version: 2, marked_by: "calls.normalised/0/12".into() });

    let key = store.key("acme", "c1");
    assert!(key.contains(":{acme}:"), "hash-tagged by tenant: {key}");
    let client = redis::Client::open(REDIS).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = c.pttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "TTL follows the window: {ttl}");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn many_marks_in_flight_keep_request_order() {
    let prefix = format!("test-dedup-{}", uuid::Uuid::new_v4().simple());
    let store = DedupStore::connect(&node(REDIS), &prefix).await.expect("redis");
    let first: Vec<MarkRequest> = (0..2000).map(|i| req(&format!("c{i}"), 1, &format!("t/0/{i}"))).collect();
    assert!(store.mark_many(&first).await.unwrap().iter().all(|m| *m == Mark::New));
    let mixed: Vec<MarkRequest> =
        (0..2000).map(|i| if i % 2 == 0 { req(&format!("c{i}"), 1, "t/0/x") } else { req(&format!("c{i}"), 2, "t/0/y") }).collect();
    let marks = store.mark_many(&mixed).await.unwrap();
    for (i, m) in marks.iter().enumerate() {
        assert_eq!(m.emit(), i % 2 == 1, "call {i}: {m:?}");
    }
    cleanup(&prefix).await;
}

/// Marks written by a deduper before this version are hashes (`v`, `in`); this one writes
/// strings. A rolling upgrade must read the old ones: a repeat of a call marked before the
/// upgrade is still a repeat, and a higher version moves the mark (as a string from then on).
#[tokio::test]
async fn marks_written_as_hashes_by_an_earlier_deduper_are_read_and_moved() {
    let prefix = format!("test-dedup-{}", uuid::Uuid::new_v4().simple());
    let store = DedupStore::connect(&node(REDIS), &prefix).await.expect("redis");
    let client = redis::Client::open(REDIS).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let (k1, k2) = (store.key("acme", "c1"), store.key("acme", "c2"));
    for (k, v, by) in [(&k1, 3, "calls.normalised/0/5"), (&k2, 1, "calls.normalised/1/8")] {
        let _: () = redis::cmd("HSET").arg(k).arg("v").arg(v).arg("in").arg(by).query_async(&mut c).await.unwrap();
        let _: () = c.pexpire(k, 60_000).await.unwrap();
    }
    let marks = store
        .mark_many(&[
            req("c1", 3, "calls.normalised/0/6"),  // a repeat of a call marked before the upgrade
            req("c1", 3, "calls.normalised/0/5"),  // the input that marked it, again
            req("c2", 2, "calls.normalised/1/9"),  // a higher version
            req("c2", 2, "calls.normalised/1/10"), // and its repeat, in the same batch
        ])
        .await
        .unwrap();
    assert_eq!(
        marks,
        vec![
            Mark::Repeat { marked_version: 3, marked_by: "calls.normalised/0/5".into() },
            Mark::Redelivered,
            Mark::Update { previous_version: 1, previous_input: "calls.normalised/1/8".into() },
            Mark::Repeat { marked_version: 2, marked_by: "calls.normalised/1/9".into() },
        ]
    );
    let kinds: Vec<String> = futures::future::join_all([&k1, &k2].map(|k| {
        let mut c = c.clone();
        async move { redis::cmd("TYPE").arg(k).query_async::<String>(&mut c).await.unwrap() }
    }))
    .await;
    assert_eq!(kinds, ["hash", "string"], "a mark that did not move is left as it was; one that moved is rewritten");
    let moved: String = c.get(&k2).await.unwrap();
    assert_eq!(moved, "2|calls.normalised/1/9");
    let ttl: i64 = c.pttl(&k2).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "the moved mark keeps the window: {ttl}");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn unreachable_redis_is_an_error_not_a_guess() {
    let err = DedupStore::connect(&node("redis://127.0.0.1:1"), "x").await;
    assert!(err.is_err(), "connecting to a closed port must fail");
}

#[tokio::test]
async fn a_restarted_redis_loses_its_scripts_and_marks_and_the_store_carries_on() {
    let mut redis = crm_sync_tests::PrivateRedis::start();
    let store = DedupStore::connect(&node(&redis.url()), "restart").await.expect("private redis");
    assert_eq!(store.mark_many(&[req("c1", 1, "t/0/1")]).await.unwrap(), vec![Mark::New]);
    redis.kill();
    assert!(store.mark_many(&[req("c1", 1, "t/0/2")]).await.is_err(), "down is an error, never a guess");
    redis.up();
    // The connection comes back on its own; the script cache is empty (NOSCRIPT, reloaded)
    // and the marks are gone, so the call is new again: the writers' keys catch that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let marks = loop {
        match store.mark_many(&[req("c1", 1, "t/0/3"), req("c1", 1, "t/0/4")]).await {
            Ok(m) => break m,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(marks[0], Mark::New);
    assert_eq!(marks[1], Mark::Repeat { marked_version: 1, marked_by: "t/0/3".into() });
}
