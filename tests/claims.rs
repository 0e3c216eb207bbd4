//! The writers' claim → write → DONE protocol against the machine's Redis: a second claim
//! of a DONE key is a duplicate, a newer version is an update of the same record, a live
//! lease makes other writers wait, an expired lease (its writer died mid-write) is recovered
//! by a lookup, and a release lets a replay claim again.

use crm_common::claims::{Claim, Claims};
use crm_sync_tests::{RedisPrefix, MACHINE_REDIS};
use std::time::Duration;

async fn claims(prefix: &RedisPrefix, owner: &str, lease_ms: u64) -> Claims {
    let client = redis::Client::open(MACHINE_REDIS).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    Claims::new(conn, &prefix.0, owner, Duration::from_millis(lease_ms), Duration::from_secs(3600))
}

#[tokio::test]
async fn claim_write_done_then_duplicates_and_updates() {
    let prefix = RedisPrefix::new("claims");
    let a = claims(&prefix, "writer-a", 30_000).await;
    let b = claims(&prefix, "writer-b", 30_000).await;
    let key = "acme:c1:hubspot";
    assert_eq!(a.claim("acme", key, 1).await.unwrap(), Claim::Create);
    // While a writes, b (after a rebalance, say) must not write too.
    assert!(matches!(b.claim("acme", key, 1).await.unwrap(), Claim::Busy { retry_after } if retry_after <= Duration::from_secs(30)));
    a.done("acme", key, 1, "9001").await.unwrap();
    assert_eq!(b.claim("acme", key, 1).await.unwrap(), Claim::AlreadyDone { record_id: "9001".into() });
    assert_eq!(b.claim("acme", key, 2).await.unwrap(), Claim::Update { record_id: "9001".into() });
    b.done("acme", key, 2, "9001").await.unwrap();
    assert_eq!(a.claim("acme", key, 1).await.unwrap(), Claim::AlreadyDone { record_id: "9001".into() }, "a stale version is a duplicate");
    assert!(prefix.keys().iter().all(|k| k.contains(":{acme}:claim:")), "{:?}", prefix.keys());
}

#[tokio::test]
async fn an_expired_lease_is_recovered_by_lookup_and_a_release_frees_the_key() {
    let prefix = RedisPrefix::new("claims");
    let dead = claims(&prefix, "writer-dead", 200).await;
    let live = claims(&prefix, "writer-live", 30_000).await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_eq!(dead.claim("acme", "acme:c2:hubspot", 1).await.unwrap(), Claim::Create);
    // writer-dead is SIGKILLed mid-write; its lease runs out.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let Claim::Recover { record_id: None, since_ms } = live.claim("acme", "acme:c2:hubspot", 1).await.unwrap() else { panic!("recover") };
    // The lost write was claimed by the dead writer, before the sleep: that is where a
    // lookup must start (Redis's clock and ours are the same machine's here).
    assert!((before - 50..before + 200).contains(&since_ms), "claimed at {since_ms}, test started {before}");
    // Our own lease, claimed again (a retry after a timeout), also means "look it up first",
    // still from the first claim.
    assert_eq!(live.claim("acme", "acme:c2:hubspot", 1).await.unwrap(), Claim::Recover { record_id: None, since_ms });
    // A late DONE from the dead writer's write still records the record id.
    dead.done("acme", "acme:c2:hubspot", 1, "77").await.unwrap();
    assert_eq!(live.claim("acme", "acme:c2:hubspot", 1).await.unwrap(), Claim::AlreadyDone { record_id: "77".into() });

    assert_eq!(live.claim("acme", "acme:c3:hubspot", 1).await.unwrap(), Claim::Create);
    assert!(!dead.release("acme", "acme:c3:hubspot").await.unwrap(), "only the owner releases");
    assert!(live.release("acme", "acme:c3:hubspot").await.unwrap());
    assert_eq!(dead.claim("acme", "acme:c3:hubspot", 1).await.unwrap(), Claim::Create, "a released key is free");
}
