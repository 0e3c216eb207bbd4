//! The writers' token buckets against the machine's Redis: rolling windows that never let
//! more than `max` through in any window (also under many concurrent takers), all-or-nothing
//! takes across limits, reserves for background work, corrections from CRM headers, and
//! blocks after a 429. Each test has its own key prefix.

use crm_connectors::bucket::{BucketSet, Limit, Take, TokenBuckets};
use crm_sync_tests::{RedisPrefix, MACHINE_REDIS};
use std::time::Duration;

async fn buckets(prefix: &RedisPrefix) -> TokenBuckets {
    let client = redis::Client::open(MACHINE_REDIS).unwrap();
    TokenBuckets::new(redis::aio::ConnectionManager::new(client).await.unwrap().into(), &prefix.0)
}

fn rolling(name: &str, max: u64, window_ms: u64) -> Limit {
    Limit::Rolling { name: name.into(), max, window: Duration::from_millis(window_ms), margin: Duration::ZERO }
}

fn set(limits: Vec<Limit>) -> BucketSet {
    BucketSet { tenant_id: "acme".into(), crm: "hubspot".into(), limits }
}

#[tokio::test]
async fn a_rolling_window_gives_back_each_token_one_window_after_it_was_spent() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    let s = set(vec![rolling("burst", 5, 1000)]);
    for _ in 0..5 {
        assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted);
    }
    let Take::Wait(w) = b.try_take(&s, 1, 0).await.unwrap() else { panic!("a sixth token in the window") };
    assert!(w > Duration::ZERO && w <= Duration::from_millis(1001), "{w:?}");
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 5)], "a refused take spends nothing");
    tokio::time::sleep(w).await;
    assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted, "the oldest token is back after the wait");
    assert!(prefix.keys().iter().all(|k| k.contains(":{acme}:")), "hash-tagged by tenant");
}

#[tokio::test]
async fn takes_are_all_or_nothing_across_limits_and_keep_a_reserve() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    let s = set(vec![rolling("burst", 10, 10_000), Limit::Daily { name: "daily".into(), max: 3, tz_offset_min: -300 }]);
    for _ in 0..3 {
        assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted);
    }
    let Take::Wait(w) = b.try_take(&s, 1, 0).await.unwrap() else { panic!("the daily limit is spent") };
    assert!(w > Duration::from_secs(0) && w <= Duration::from_secs(86_400), "until midnight: {w:?}");
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 3), ("daily".to_string(), 3)]);

    // Background work keeps 40% (4 of 10) free for live writes.
    let bg = set(vec![rolling("bg", 10, 10_000)]);
    let mut granted = 0;
    while b.try_take(&bg, 1, 40).await.unwrap() == Take::Granted {
        granted += 1;
    }
    assert_eq!(granted, 6);
    assert_eq!(b.try_take(&bg, 4, 0).await.unwrap(), Take::Granted, "live writes still get the reserve");
}

#[tokio::test]
async fn many_concurrent_takers_never_exceed_the_window() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    let s = set(vec![rolling("burst", 50, 60_000)]);
    let takes = (0..400).map(|_| {
        let (b, s) = (b.clone(), s.clone());
        tokio::spawn(async move { b.try_take(&s, 1, 0).await.unwrap() })
    });
    let results = futures::future::join_all(takes).await;
    let granted = results.iter().filter(|r| *r.as_ref().unwrap() == Take::Granted).count();
    assert_eq!(granted, 50);
}

#[tokio::test]
async fn crm_headers_correct_the_count_and_a_429_blocks_every_taker() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    let s = set(vec![rolling("burst", 100, 10_000), Limit::Daily { name: "daily".into(), max: 1000, tz_offset_min: 0 }]);
    assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted);
    // The CRM says only 10 are left in the window (another app spent the rest).
    assert_eq!(b.observe(&s, "burst", 10).await.unwrap(), 89);
    assert_eq!(b.observe(&s, "burst", 50).await.unwrap(), 0, "never raised by a stale header");
    assert_eq!(b.observe(&s, "daily", 900).await.unwrap(), 99);
    let mut granted = 0;
    while b.try_take(&s, 1, 0).await.unwrap() == Take::Granted {
        granted += 1;
    }
    assert_eq!(granted, 10);

    let other = set(vec![rolling("free", 100, 10_000)]);
    let other = BucketSet { crm: "zoho".into(), ..other };
    assert_eq!(b.try_take(&other, 1, 0).await.unwrap(), Take::Granted);
    b.block(&other, Duration::from_millis(400)).await.unwrap();
    let Take::Wait(w) = b.try_take(&other, 1, 0).await.unwrap() else { panic!("blocked") };
    assert!(w <= Duration::from_millis(400) && w > Duration::from_millis(200), "{w:?}");
    tokio::time::sleep(w).await;
    assert_eq!(b.try_take(&other, 1, 0).await.unwrap(), Take::Granted, "the block ends at the CRM's reset");
}

/// An answer settles its tokens and applies what its headers said in one round trip: the
/// request's own token is counted once, a limit the headers name is corrected, a limit they
/// do not name is untouched, and a limit the set does not have is ignored.
#[tokio::test]
async fn settling_an_answer_applies_its_headers_in_the_same_round_trip() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await.with_lease(Duration::from_secs(30));
    let s = set(vec![rolling("burst", 100, 10_000), Limit::Daily { name: "daily".into(), max: 1000, tz_offset_min: 0 }]);
    assert_eq!(b.try_take_each(&s, &[1, 1], 0, "req").await.unwrap(), Take::Granted);
    // Redis has the script (a fresh Redis answers the first call NOSCRIPT: three trips).
    b.settle(&s, "nothing", &[0, 0], &[]).await.unwrap();
    let before = crm_common::redis_conn::round_trips();
    // The CRM counted our request and 9 of another app's: 90 left of 100; the daily
    // allowance it does not report here.
    b.settle(&s, "req", &[1, 1], &[("burst".into(), 90), ("nonesuch".into(), 0)]).await.unwrap();
    assert_eq!(crm_common::redis_conn::round_trips() - before, 1, "one round trip");
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 10), ("daily".to_string(), 1)]);
    // A stale header never raises the count back.
    assert_eq!(b.try_take_each(&s, &[1, 1], 0, "req2").await.unwrap(), Take::Granted);
    b.settle(&s, "req2", &[1, 1], &[("burst".into(), 95)]).await.unwrap();
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 11), ("daily".to_string(), 2)]);
}

#[tokio::test]
async fn a_reported_limit_follows_the_crm_both_ways() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    // Salesforce's rolling 24 h allocation: only Sforce-Limit-Info knows how much is left.
    let s = BucketSet {
        tenant_id: "acme".into(),
        crm: "salesforce".into(),
        limits: vec![Limit::Reported { name: "api".into(), max: 100, recheck: Duration::from_secs(60) }],
    };
    assert_eq!(b.observe(&s, "api", 3).await.unwrap(), 97, "api-usage=97/100");
    for _ in 0..3 {
        assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted);
    }
    assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Wait(Duration::from_secs(60)), "spent: look again later");
    // The org's window moved on: usage fell to 40/100. The count follows it down.
    assert_eq!(b.observe(&s, "api", 60).await.unwrap(), -60);
    assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted);
    assert_eq!(b.used(&s).await.unwrap(), vec![("api".to_string(), 41)]);
}

#[tokio::test]
async fn a_spent_reported_limit_lets_one_probe_through_per_recheck() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    let s = set(vec![Limit::Reported { name: "api".into(), max: 10, recheck: Duration::from_millis(300) }]);
    b.observe(&s, "api", 0).await.unwrap();
    // Nothing but a live request can tell when Salesforce's window frees again: after the
    // recheck interval exactly one take goes through as a probe, the others keep waiting.
    assert!(matches!(b.try_take(&s, 1, 0).await.unwrap(), Take::Wait(_)));
    tokio::time::sleep(Duration::from_millis(320)).await;
    assert!(matches!(b.try_take(&s, 1, 2).await.unwrap(), Take::Wait(_)), "background work never probes");
    assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted, "the probe");
    assert!(matches!(b.try_take(&s, 1, 0).await.unwrap(), Take::Wait(w) if w > Duration::from_millis(200)), "one probe per interval");
    // The probe's answer said the window moved on: takes flow again.
    b.observe(&s, "api", 5).await.unwrap();
    assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted);
}

/// Answers are settled out of the order they came in (one rides its tenant's next take,
/// another waits for the flusher, a resent DONE applies one twice). A reported count is the
/// CRM's count when that answer left it: an older answer's lower count is stale and must not
/// undo a newer one, or requests go into an allowance already spent (each one a 403).
#[tokio::test]
async fn a_reported_count_is_never_undone_by_an_older_answer_settled_later() {
    let prefix = RedisPrefix::new("bucket");
    // The flusher waits half a second: the older answer is settled after the newer one.
    let b = buckets(&prefix).await.with_settle_within(Duration::from_millis(500));
    let s = set(vec![Limit::Reported { name: "api".into(), max: 70, recheck: Duration::from_secs(60) }]);
    // Answered first: the CRM had counted 69 of 70.
    b.settle_soon(&s, "older", &[1], &[("api".into(), 1)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Answered later, settled at once: 70 of 70, spent.
    b.settle(&s, "newer", &[1], &[("api".into(), 0)]).await.unwrap();
    assert_eq!(b.used(&s).await.unwrap(), vec![("api".to_string(), 70)]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(b.used(&s).await.unwrap(), vec![("api".to_string(), 70)], "the older answer's 69 is stale");
    assert!(matches!(b.try_take(&s, 1, 0).await.unwrap(), Take::Wait(_)), "nothing goes into a spent allowance");
    // A newer answer still moves the count either way (the org's window moved on).
    b.settle(&s, "newest", &[1], &[("api".into(), 30)]).await.unwrap();
    assert_eq!(b.used(&s).await.unwrap(), vec![("api".to_string(), 40)]);
    assert_eq!(b.try_take(&s, 1, 0).await.unwrap(), Take::Granted);
}

#[tokio::test]
async fn costs_differ_per_limit_and_concurrency_slots_come_back_on_release_or_lease() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    // Pipedrive: a create counts once in the burst window and 5 in the daily budget.
    let pd = set(vec![rolling("burst", 100, 2000), Limit::Daily { name: "budget".into(), max: 12, tz_offset_min: 0 }]);
    assert_eq!(b.try_take_each(&pd, &[1, 5], 0, "a").await.unwrap(), Take::Granted);
    assert_eq!(b.try_take_each(&pd, &[1, 5], 0, "b").await.unwrap(), Take::Granted);
    assert!(matches!(b.try_take_each(&pd, &[1, 5], 0, "c").await.unwrap(), Take::Wait(_)), "10 of 12 spent: no room for 5");
    assert_eq!(b.try_take_each(&pd, &[1, 2], 0, "d").await.unwrap(), Take::Granted);
    assert_eq!(b.used(&pd).await.unwrap(), vec![("burst".to_string(), 3), ("budget".to_string(), 12)]);

    // Zoho: two requests in flight at once; a third waits until one finishes.
    let z = set(vec![Limit::Concurrent {
        name: "inflight".into(),
        max: 2,
        lease: Duration::from_millis(400),
        poll: Duration::from_millis(20),
    }]);
    assert_eq!(b.try_take_each(&z, &[1], 0, "r1").await.unwrap(), Take::Granted);
    assert_eq!(b.try_take_each(&z, &[1], 0, "r2").await.unwrap(), Take::Granted);
    assert_eq!(b.try_take_each(&z, &[1], 0, "r3").await.unwrap(), Take::Wait(Duration::from_millis(20)));
    b.settle(&z, "r1", &[1], &[]).await.unwrap();
    assert_eq!(b.try_take_each(&z, &[1], 0, "r3").await.unwrap(), Take::Granted, "a finished request gives its slot back");
    assert_eq!(b.used(&z).await.unwrap(), vec![("inflight".to_string(), 2)]);
    // r2 and r3 belong to a writer that died: their leases end and the slots come back.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(b.used(&z).await.unwrap(), vec![("inflight".to_string(), 0)]);
    assert_eq!(b.try_take_each(&z, &[1], 0, "r4").await.unwrap(), Take::Granted);
}

#[tokio::test]
async fn a_slotted_window_never_gives_a_token_back_before_its_slot_has_left_the_window() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    // Zoho's rolling 24 h credits, scaled down: 6 per 600 ms in 100 ms slots.
    let s =
        set(vec![Limit::Slotted { name: "credits".into(), max: 6, window: Duration::from_millis(600), slot: Duration::from_millis(100) }]);
    assert_eq!(b.try_take(&s, 4, 0).await.unwrap(), Take::Granted);
    assert_eq!(b.try_take(&s, 2, 0).await.unwrap(), Take::Granted);
    let Take::Wait(w) = b.try_take(&s, 1, 0).await.unwrap() else { panic!("6 of 6 spent") };
    assert!(w > Duration::from_millis(500) && w <= Duration::from_millis(701), "back once the first slot has left the window: {w:?}");
    // The CRM's header says more was spent (another app): the count follows it up.
    let s2 =
        set(vec![Limit::Slotted { name: "more".into(), max: 100, window: Duration::from_millis(600), slot: Duration::from_millis(100) }]);
    assert_eq!(b.observe(&s2, "more", 40).await.unwrap(), 60);
    assert_eq!(b.used(&s2).await.unwrap(), vec![("more".to_string(), 60)]);
    tokio::time::sleep(w).await;
    assert_eq!(b.try_take(&s, 4, 0).await.unwrap(), Take::Granted, "the oldest slot's 4 tokens are back");
}

#[tokio::test]
async fn a_rolling_token_counts_from_when_its_request_was_answered() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await.with_lease(Duration::from_millis(1500));
    let s = set(vec![rolling("burst", 1, 300)]);
    assert_eq!(b.try_take_each(&s, &[1], 0, "slow").await.unwrap(), Take::Granted);
    // The request is still on its way a window later: the CRM may not have counted it yet,
    // so its token is not back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(b.try_take_each(&s, &[1], 0, "next").await.unwrap(), Take::Wait(_)), "in flight past a window");
    // Answered now: the token comes back one window after the answer, not before.
    b.settle(&s, "slow", &[1], &[]).await.unwrap();
    let Take::Wait(w) = b.try_take_each(&s, &[1], 0, "next").await.unwrap() else { panic!("back before a window after the answer") };
    assert!(w > Duration::from_millis(200) && w <= Duration::from_millis(301), "one window from the answer: {w:?}");
    tokio::time::sleep(w).await;
    assert_eq!(b.try_take_each(&s, &[1], 0, "next").await.unwrap(), Take::Granted);
    // A request never answered (its writer died) holds its token for the lease, then the
    // window: it cannot still be arriving at the CRM by then.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 1)], "'next' is unanswered: still held");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.try_take_each(&s, &[1], 0, "after").await.unwrap(), Take::Granted, "lease and window over");
    // Settling a token whose lease ran out does not bring it back into the window.
    b.settle(&s, "next", &[1], &[]).await.unwrap();
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 1)]);
}

/// An answer settled with `settle_soon` costs no round trip of its own: the tenant's next take
/// carries it, scored by when it was answered (not by that take), and the concurrency slot
/// it held is free for that very take.
#[tokio::test]
async fn an_answer_rides_its_tenants_next_take_scored_by_when_it_was_answered() {
    let prefix = RedisPrefix::new("bucket");
    // The flusher would take a minute: only a take can settle it in this test.
    let b = buckets(&prefix).await.with_lease(Duration::from_secs(30)).with_settle_within(Duration::from_secs(60));
    let one_at_a_time =
        Limit::Concurrent { name: "inflight".into(), max: 1, lease: Duration::from_secs(30), poll: Duration::from_millis(20) };
    let s = set(vec![rolling("burst", 2, 5000), one_at_a_time]);
    assert_eq!(b.try_take_each(&s, &[1, 1], 0, "a").await.unwrap(), Take::Granted);
    b.settle_soon(&s, "a", &[1, 1], &[("burst".into(), 1)]);
    let answered = redis_now_ms().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = crm_common::redis_conn::round_trips();
    assert_eq!(b.try_take_each(&s, &[1, 1], 0, "b").await.unwrap(), Take::Granted, "a's slot came back with the take");
    assert_eq!(crm_common::redis_conn::round_trips() - before, 1, "settle and take in one round trip");
    let score = member_score(&prefix, &s, "burst", "a:1").await;
    assert!((answered - 20..=answered + 20).contains(&score), "scored by the answer ({answered}), not the take: {score}");
    // Both tokens are in the window; the first comes back a window after its answer, ~4.6 s
    // from now (a settle scored at the take would say ~5 s, an unsettled one 30 s).
    let Take::Wait(w) = b.try_take_each(&s, &[1, 0], 0, "c").await.unwrap() else { panic!("2 of 2 spent") };
    assert!(w > Duration::from_millis(3000) && w <= Duration::from_millis(4700), "{w:?}");
}

/// An answer no take carries is settled by the flusher within a few milliseconds, with every
/// other tenant's waiting answer in the same round trip (one node).
#[tokio::test]
async fn answers_no_take_carries_are_settled_together_within_milliseconds() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await.with_lease(Duration::from_secs(30));
    let slot = |tenant: &str| BucketSet {
        tenant_id: tenant.into(),
        crm: "zoho".into(),
        limits: vec![
            rolling("burst", 10, 1000),
            Limit::Concurrent { name: "inflight".into(), max: 1, lease: Duration::from_secs(30), poll: Duration::from_millis(20) },
        ],
    };
    let tenants = ["acme", "globex", "initech"];
    for t in tenants {
        assert_eq!(b.try_take_each(&slot(t), &[1, 1], 0, "r").await.unwrap(), Take::Granted);
    }
    // Redis has the settle script (a fresh Redis answers its first call NOSCRIPT).
    b.settle(&slot("nobody"), "nothing", &[0, 0], &[]).await.unwrap();
    let before = crm_common::redis_conn::round_trips();
    for t in tenants {
        b.settle_soon(&slot(t), "r", &[1, 1], &[]);
    }
    let answered = redis_now_ms().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = &b;
    let used: Vec<_> = futures::future::join_all(tenants.map(|t| async move { b.used(&slot(t)).await.unwrap() })).await;
    for u in &used {
        assert_eq!(u, &vec![("burst".to_string(), 1), ("inflight".to_string(), 0)], "settled: the slot is back");
    }
    let trips = crm_common::redis_conn::round_trips() - before;
    for t in tenants {
        let score = member_score(&prefix, &slot(t), "burst", "r:1").await;
        assert!((answered - 20..=answered + 30).contains(&score), "{t}: scored by the answer ({answered}): {score}");
    }
    // `used` asks for Redis's time and the count per limit: 2 per limit per tenant.
    assert_eq!(trips, 1 + 3 * 4, "one round trip settled the three tenants");
}

async fn redis_now_ms() -> i64 {
    let mut c = redis::Client::open(MACHINE_REDIS).unwrap().get_multiplexed_async_connection().await.unwrap();
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    s * 1000 + us / 1000
}

async fn member_score(prefix: &RedisPrefix, set: &BucketSet, limit: &str, member: &str) -> i64 {
    let mut c = redis::Client::open(MACHINE_REDIS).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = crm_common::redis_keys::bucket(&prefix.0, &set.tenant_id, &set.crm, limit);
    let s: Option<f64> = redis::cmd("ZSCORE").arg(key).arg(member).query_async(&mut c).await.unwrap();
    s.expect("the token is in the window") as i64
}

/// A take of several units (a lane's coming reads) grants what every limit has room for, at
/// least one; each unit is settled on its own; the units never used are given back, once,
/// however often the give-back is sent, from every kind of limit (rolling tokens, a day's
/// count, a slot's count, concurrency slots).
#[tokio::test]
async fn a_grant_of_units_takes_what_fits_and_gives_back_the_unused_once() {
    let prefix = RedisPrefix::new("bucket");
    let b = buckets(&prefix).await;
    let hold = Duration::from_secs(2);
    // HubSpot-like: 5 per second, 100 a day; a request costs 1 of each.
    let hs = set(vec![rolling("burst", 5, 1000), Limit::Daily { name: "day".into(), max: 100, tz_offset_min: 0 }]);
    assert_eq!(b.try_take(&hs, 1, 0).await.unwrap(), Take::Granted);
    let g = b.try_take_units(&hs, &[1, 1], 8, hold, 0, "g1").await.unwrap().expect("room for some");
    assert_eq!(g.units, 4, "8 wanted, 4 fit beside the 1 already spent");
    assert!(matches!(b.try_take(&hs, 1, 0).await.unwrap(), Take::Wait(_)), "the grant holds the rest of the window");
    assert_eq!(b.used(&hs).await.unwrap(), vec![("burst".to_string(), 5), ("day".to_string(), 5)]);
    // Two units were used; the other two go back, riding the next round trip.
    b.settle_unit_soon(&hs, &g.id, &[1, 1], 2, &[]);
    b.give_back_soon(&hs, &[1, 1], &g, 2);
    b.flush().await;
    assert_eq!(b.used(&hs).await.unwrap(), vec![("burst".to_string(), 3), ("day".to_string(), 3)]);
    // Sent again (a pipeline resent after NOSCRIPT): nothing more comes back.
    b.give_back_soon(&hs, &[1, 1], &g, 2);
    b.flush().await;
    assert_eq!(b.used(&hs).await.unwrap(), vec![("burst".to_string(), 3), ("day".to_string(), 3)], "given back once");
    let rest = b.try_take_units(&hs, &[1, 1], 8, hold, 0, "g2").await.unwrap().expect("two fit");
    assert_eq!(rest.units, 2);
    let Err(w) = b.try_take_units(&hs, &[1, 1], 8, hold, 0, "g3").await.unwrap() else { panic!("none fit") };
    assert!(w <= Duration::from_millis(1001), "the oldest token's return: {w:?}");

    // Zoho-like: credits in slots, two requests in flight; a unit costs 2 credits.
    let z = set(vec![
        Limit::Slotted { name: "credits".into(), max: 10, window: Duration::from_secs(60), slot: Duration::from_secs(10) },
        Limit::Concurrent { name: "inflight".into(), max: 2, lease: Duration::from_secs(5), poll: Duration::from_millis(20) },
    ]);
    let g = b.try_take_units(&z, &[2, 1], 3, hold, 0, "z1").await.unwrap().expect("room");
    assert_eq!(g.units, 2, "two in flight at most");
    assert_eq!(b.used(&z).await.unwrap(), vec![("credits".to_string(), 4), ("inflight".to_string(), 2)]);
    // Unit 1 answered (its slot comes back); unit 2 never sent.
    b.settle_unit_soon(&z, &g.id, &[2, 1], 1, &[]);
    b.give_back_soon(&z, &[2, 1], &g, 1);
    b.flush().await;
    assert_eq!(b.used(&z).await.unwrap(), vec![("credits".to_string(), 2), ("inflight".to_string(), 0)]);
}
