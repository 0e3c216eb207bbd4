//! The writers' claim → write → DONE protocol against the machine's Redis: a second claim
//! of a DONE key is a duplicate, a newer version is an update of the same record, a live
//! lease makes other writers wait, an expired lease (its writer died mid-write) is recovered
//! by a lookup, a release lets a replay claim again, fencing keeps a writer that lost its
//! lease from writing, and a claim store that lost its data makes old activities look up
//! before they create.

use crm_connectors::claims::{Claim, Claims, Recovery, Timing};
use crm_sync_tests::{RedisPrefix, MACHINE_REDIS};
use std::time::Duration;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn claims_with(prefix: &RedisPrefix, owner: &str, lease_ms: u64, horizon_ms: u64) -> Claims {
    let client = redis::Client::open(MACHINE_REDIS).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap().into();
    let timing = Timing {
        lease: Duration::from_millis(lease_ms),
        request_timeout: Duration::ZERO,
        late_write_horizon: Duration::from_millis(horizon_ms),
        clock_skew: Duration::from_secs(1),
    };
    Claims::new(conn, &prefix.0, owner, timing, Duration::from_secs(3600))
}

async fn claims(prefix: &RedisPrefix, owner: &str, lease_ms: u64) -> Claims {
    claims_with(prefix, owner, lease_ms, 0).await
}

#[tokio::test]
async fn claim_write_done_then_duplicates_and_updates() {
    let prefix = RedisPrefix::new("claims");
    let a = claims(&prefix, "writer-a", 30_000).await;
    let b = claims(&prefix, "writer-b", 30_000).await;
    let key = "acme:c1:hubspot";
    let era = now_ms() + 5_000;
    assert_eq!(a.claim("acme", key, 1, era).await.unwrap(), Claim::Create);
    // While a writes, b (after a rebalance, say) must not write too.
    assert!(matches!(b.claim("acme", key, 1, era).await.unwrap(), Claim::Busy { retry_after } if retry_after <= Duration::from_secs(30)));
    a.done("acme", key, 1, "9001").await.unwrap();
    assert_eq!(b.claim("acme", key, 1, era).await.unwrap(), Claim::AlreadyDone { record_id: "9001".into() });
    assert_eq!(b.claim("acme", key, 2, era).await.unwrap(), Claim::Update { record_id: "9001".into() });
    b.done("acme", key, 2, "9001").await.unwrap();
    assert_eq!(
        a.claim("acme", key, 1, era).await.unwrap(),
        Claim::AlreadyDone { record_id: "9001".into() },
        "a stale version is a duplicate"
    );
    assert!(prefix.keys().iter().all(|k| k.contains(":{acme}:claim:") || k.ends_with(":{acme}:claims-epoch")), "{:?}", prefix.keys());
}

#[tokio::test]
async fn an_expired_lease_is_recovered_by_lookup_and_a_release_frees_the_key() {
    let prefix = RedisPrefix::new("claims");
    let dead = claims_with(&prefix, "writer-dead", 200, 1_500).await;
    let live = claims_with(&prefix, "writer-live", 30_000, 1_500).await;
    let before = now_ms();
    let era = before + 5_000;
    assert_eq!(dead.claim("acme", "acme:c2:hubspot", 1, era).await.unwrap(), Claim::Create);
    // writer-dead is SIGKILLed mid-write; its lease runs out.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let Claim::Recover { record_id: None, since_ms, why: Recovery::ExpiredLease, settle } =
        live.claim("acme", "acme:c2:hubspot", 1, era).await.unwrap()
    else {
        panic!("recover")
    };
    // The lost write was claimed by the dead writer, before the sleep: that is where a
    // lookup must start (Redis's clock and ours are the same machine's here).
    assert!((before - 50..before + 200).contains(&since_ms), "claimed at {since_ms}, test started {before}");
    // A write sent under the dead lease may still land for the horizon after the lease ended.
    assert!(settle > Duration::from_millis(1_000) && settle <= Duration::from_millis(1_500), "{settle:?}");
    // Our own lease, claimed again (a retry after a timeout), also means "look it up first",
    // still from the first claim.
    let again = live.claim("acme", "acme:c2:hubspot", 1, era).await.unwrap();
    assert!(
        matches!(again, Claim::Recover { record_id: None, since_ms: s, why: Recovery::ExpiredLease, .. } if s == since_ms),
        "{again:?}"
    );
    // A late DONE from the dead writer's write still records the record id.
    dead.done("acme", "acme:c2:hubspot", 1, "77").await.unwrap();
    assert_eq!(live.claim("acme", "acme:c2:hubspot", 1, era).await.unwrap(), Claim::AlreadyDone { record_id: "77".into() });

    assert_eq!(live.claim("acme", "acme:c3:hubspot", 1, era).await.unwrap(), Claim::Create);
    assert!(!dead.release("acme", "acme:c3:hubspot").await.unwrap(), "only the owner releases");
    assert!(live.release("acme", "acme:c3:hubspot").await.unwrap());
    assert_eq!(dead.claim("acme", "acme:c3:hubspot", 1, era).await.unwrap(), Claim::Create, "a released key is free");
}

/// A writer paused past its lease resumes after another recovered the key: its fence check
/// fails, so it never sends. A live writer's fence renews its lease.
#[tokio::test]
async fn fencing_refuses_a_writer_whose_lease_was_taken_over() {
    let prefix = RedisPrefix::new("claims");
    let zombie = claims(&prefix, "writer-zombie", 300).await;
    let other = claims(&prefix, "writer-other", 30_000).await;
    let era = now_ms() + 5_000;
    let (k1, k2) = ("acme:z1:zoho", "acme:z2:zoho");
    assert_eq!(zombie.claim("acme", k1, 1, era).await.unwrap(), Claim::Create);
    assert_eq!(zombie.claim("acme", k2, 1, era).await.unwrap(), Claim::Create);
    assert_eq!(zombie.fence("acme", &[k1, k2]).await.unwrap(), vec![true, true]);
    // Renewed: still ours past the original lease.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(zombie.fence("acme", &[k1, k2]).await.unwrap(), vec![true, true]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(other.claim("acme", k1, 1, era).await.unwrap(), Claim::Busy { .. }), "the renewal kept the lease alive");
    // The zombie stops for longer than its lease; the other writer recovers k1.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(other.claim("acme", k1, 1, era).await.unwrap(), Claim::Recover { why: Recovery::ExpiredLease, .. }));
    assert_eq!(zombie.fence("acme", &[k1, k2]).await.unwrap(), vec![false, true], "k1 is no longer the zombie's to write");
    // DONE by its new owner: the zombie cannot write it either.
    other.done("acme", k1, 1, "5").await.unwrap();
    assert_eq!(zombie.fence("acme", &[k1]).await.unwrap(), vec![false]);
}

/// Redis restarted without its data: the tenant's epoch starts again, and an activity older
/// than it must look the CRM up before creating; a newer one creates at once.
#[tokio::test]
async fn a_claim_store_that_lost_its_data_looks_up_old_activities() {
    let prefix = RedisPrefix::new("claims");
    let w = claims_with(&prefix, "writer-a", 30_000, 500).await;
    let start = now_ms();
    // The first claim starts the epoch: an activity from before it is looked up first.
    let old = w.claim("acme", "acme:old:zoho", 1, start - 3_600_000).await.unwrap();
    let Claim::Recover { why: Recovery::Forgotten, since_ms, record_id: None, .. } = old else { panic!("{old:?}") };
    assert!(since_ms <= start - 3_600_000, "a lookup covers the activity's whole life: {since_ms}");
    assert_eq!(w.claim("acme", "acme:new:zoho", 1, now_ms() + 2_000).await.unwrap(), Claim::Create);
    w.done("acme", "acme:new:zoho", 1, "1").await.unwrap();
    // Data lost (the keys vanish, as after a restart without persistence).
    prefix.flush();
    let era = start + 1_500;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = w.claim("acme", "acme:new:zoho", 1, era).await.unwrap();
    assert!(
        matches!(again, Claim::Recover { why: Recovery::Forgotten, .. }),
        "the DONE was lost: look it up, never create blindly: {again:?}"
    );
    // Claims older than the retention are as good as lost.
    let short = {
        let client = redis::Client::open(MACHINE_REDIS).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap().into();
        Claims::new(
            conn,
            &prefix.0,
            "writer-b",
            Timing {
                lease: Duration::from_secs(30),
                request_timeout: Duration::ZERO,
                late_write_horizon: Duration::ZERO,
                clock_skew: Duration::ZERO,
            },
            Duration::from_secs(60),
        )
    };
    let stale = short.claim("globex", "globex:c9:zoho", 1, now_ms() - 120_000).await.unwrap();
    assert!(matches!(stale, Claim::Recover { why: Recovery::Forgotten, .. }), "{stale:?}");
}

/// A batch's keys are claimed in one round trip, each answered as a claim of its own would be.
#[tokio::test]
async fn a_batch_of_keys_is_claimed_in_one_round_trip_each_as_alone() {
    let prefix = RedisPrefix::new("claims");
    let a = claims(&prefix, "writer-a", 30_000).await;
    let b = claims(&prefix, "writer-b", 30_000).await;
    let era = now_ms() + 5_000;
    let (done, busy, update, new) = ("acme:m1:hubspot", "acme:m2:hubspot", "acme:m3:hubspot", "acme:m4:hubspot");
    for k in [done, update] {
        assert_eq!(a.claim("acme", k, 1, era).await.unwrap(), Claim::Create);
        a.done("acme", k, 1, &format!("rec-{k}")).await.unwrap();
    }
    assert_eq!(b.claim("acme", busy, 1, era).await.unwrap(), Claim::Create);
    let before = crm_common::redis_conn::round_trips();
    let got = a.claim_many("acme", &[(done, 1, era), (busy, 1, era), (update, 2, era), (new, 1, era)]).await.unwrap();
    assert_eq!(crm_common::redis_conn::round_trips() - before, 1);
    assert_eq!(got[0], Claim::AlreadyDone { record_id: format!("rec-{done}") });
    assert!(matches!(got[1], Claim::Busy { .. }), "{:?}", got[1]);
    assert_eq!(got[2], Claim::Update { record_id: format!("rec-{update}") });
    assert_eq!(got[3], Claim::Create);
    // The keys it claimed are leased to it, as one claim would leave them.
    assert_eq!(a.fence("acme", &[update, new, busy]).await.unwrap(), vec![true, true, false]);
    assert!(matches!(b.claim("acme", new, 1, era).await.unwrap(), Claim::Busy { .. }));
    assert!(a.claim_many("acme", &[]).await.unwrap().is_empty());
}

/// The take that pays for a write fences it in the same round trip: a writer that lost a
/// key's lease is refused and spends nothing; one that holds them all gets its tokens and
/// its leases renewed.
#[tokio::test]
async fn the_take_that_pays_for_a_write_fences_it_and_spends_nothing_when_a_lease_is_lost() {
    use crm_connectors::bucket::{BucketSet, Limit, Take, TokenBuckets};
    let prefix = RedisPrefix::new("claims");
    let zombie = claims(&prefix, "writer-zombie", 300).await;
    let other = claims(&prefix, "writer-other", 30_000).await;
    let client = redis::Client::open(MACHINE_REDIS).unwrap();
    let b = TokenBuckets::new(redis::aio::ConnectionManager::new(client).await.unwrap().into(), &prefix.0);
    let s = BucketSet {
        tenant_id: "acme".into(),
        crm: "zoho".into(),
        limits: vec![Limit::Rolling { name: "burst".into(), max: 10, window: Duration::from_secs(10), margin: Duration::ZERO }],
    };
    let era = now_ms() + 5_000;
    let (k1, k2) = ("acme:f1:zoho", "acme:f2:zoho");
    assert_eq!(zombie.claim_many("acme", &[(k1, 1, era), (k2, 1, era)]).await.unwrap(), vec![Claim::Create, Claim::Create]);
    let both = [k1.to_string(), k2.to_string()];
    assert_eq!(b.try_take_fenced(&s, &[1], 0, "t1", Some(&zombie.fence_of("acme", &both))).await.unwrap(), Take::Granted);
    // Renewed by the take: still the zombie's past the first lease.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.try_take_fenced(&s, &[1], 0, "t2", Some(&zombie.fence_of("acme", &both))).await.unwrap(), Take::Granted);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(other.claim("acme", k1, 1, era).await.unwrap(), Claim::Busy { .. }), "the take renewed the lease");
    // The zombie stops past its lease; the other writer recovers k1.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(other.claim("acme", k1, 1, era).await.unwrap(), Claim::Recover { why: Recovery::ExpiredLease, .. }));
    let before = crm_common::redis_conn::round_trips();
    assert_eq!(b.try_take_fenced(&s, &[1], 0, "t3", Some(&zombie.fence_of("acme", &both))).await.unwrap(), Take::FencedOff(vec![0]));
    assert_eq!(crm_common::redis_conn::round_trips() - before, 1);
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 2)], "the refused take spent nothing");
    assert_eq!(b.try_take_fenced(&s, &[1], 0, "t4", Some(&other.fence_of("acme", &[k1.to_string()]))).await.unwrap(), Take::Granted);
    assert_eq!(b.used(&s).await.unwrap(), vec![("burst".to_string(), 3)]);
}

/// A lane's tokens taken ahead in one round trip (`TokenBuckets::take_many`): each take on
/// its own, a write's fenced like any write's take. Reads get as many units as fit; a write
/// whose lease another writer took is refused and spends nothing, while its neighbours are
/// granted; a take that would wait spends nothing either. Unused units go back once.
#[tokio::test]
async fn tokens_taken_ahead_are_fenced_one_by_one_in_one_round_trip() {
    use crm_connectors::bucket::{BucketSet, Grant, Limit, Take, TakeArgs, TokenBuckets};
    let prefix = RedisPrefix::new("claims");
    let zombie = claims(&prefix, "writer-zombie", 200).await;
    let live = claims(&prefix, "writer-live", 30_000).await;
    let client = redis::Client::open(MACHINE_REDIS).unwrap();
    let b = TokenBuckets::new(redis::aio::ConnectionManager::new(client).await.unwrap().into(), &prefix.0);
    let rolling = |name: &str, max| Limit::Rolling { name: name.into(), max, window: Duration::from_secs(10), margin: Duration::ZERO };
    let writes = BucketSet { tenant_id: "acme".into(), crm: "hubspot".into(), limits: vec![rolling("burst", 10)] };
    let search = BucketSet { tenant_id: "acme".into(), crm: "hubspot".into(), limits: vec![rolling("search", 2)] };
    let era = now_ms() + 5_000;
    let (k1, k2) = ("acme:a1:hubspot", "acme:a2:hubspot");
    assert_eq!(zombie.claim("acme", k1, 1, era).await.unwrap(), Claim::Create);
    assert_eq!(live.claim("acme", k2, 1, era).await.unwrap(), Claim::Create);
    // The zombie stops past its lease; the live writer takes k1 over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(live.claim("acme", k1, 1, era).await.unwrap(), Claim::Recover { .. }));
    let zombie_fence = zombie.fence_of("acme", &[k1.to_string()]);
    let live_fence = live.fence_of("acme", &[k2.to_string()]);
    let take =
        |set, want, id, fence| TakeArgs { set, costs: &[1], want, hold: Duration::from_secs(2), reserve_pct: 0, id, fence, grant: true };
    let before = crm_common::redis_conn::round_trips();
    let answers = b
        .take_many(
            "acme",
            &[
                take(&writes, 4, "reads", None),
                take(&search, 5, "searches", None),
                take(&writes, 1, "w-zombie", Some(&zombie_fence)),
                take(&writes, 1, "w-live", Some(&live_fence)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(crm_common::redis_conn::round_trips() - before, 1, "one round trip");
    let outcomes: Vec<(Take, u64)> = answers.iter().map(|(t, n, _)| (t.clone(), *n)).collect();
    assert_eq!(
        outcomes,
        vec![(Take::Granted, 4), (Take::Granted, 2), (Take::FencedOff(vec![0]), 0), (Take::Granted, 1)],
        "reads: 4; searches: the 2 that fit; the zombie's write refused; the live one granted"
    );
    assert_eq!(b.used(&writes).await.unwrap(), vec![("burst".to_string(), 5)], "the refused write spent nothing");
    assert!(matches!(zombie.claim("acme", k2, 1, era).await.unwrap(), Claim::Busy { .. }), "still the live writer's");
    let Take::Wait(_) = b.take_many("acme", &[take(&search, 1, "more", None)]).await.unwrap()[0].0 else {
        panic!("the search window is spent")
    };
    // Three of the reads and the live write's unit were never used: they go back, once.
    let reads = Grant { id: "reads".into(), units: 4, at_ms: answers[0].2 };
    let write = Grant { id: "w-live".into(), units: 1, at_ms: answers[3].2 };
    for _ in 0..2 {
        b.give_back_soon(&writes, &[1], &reads, 1);
        b.give_back_soon(&writes, &[1], &write, 0);
        b.flush().await;
    }
    assert_eq!(b.used(&writes).await.unwrap(), vec![("burst".to_string(), 1)]);
}

/// A claim store that lost its data looks a forgotten activity up since the beginning (a
/// meeting's later version has no era: 0). If that writer dies after writing and before its
/// DONE, the writer that recovers the expired lease must look up since the beginning too:
/// the reliability suite once saw it look up only what changed since its own claim, miss
/// the record the dead writer had created a minute before, and create a second Pipedrive
/// meeting.
#[tokio::test]
async fn a_forgotten_key_recovered_again_after_its_writer_died_is_still_looked_up_since_the_beginning() {
    let prefix = RedisPrefix::new("claims");
    let dead = claims_with(&prefix, "writer-dead", 200, 0).await;
    let live = claims_with(&prefix, "writer-live", 30_000, 0).await;
    let key = "acme:meeting:m1:pipedrive";
    // An older epoch: the store started remembering before now, and the era is unknown.
    let first = dead.claim("acme", key, 3, 0).await.unwrap();
    let Claim::Recover { why: Recovery::Forgotten, since_ms, .. } = first else { panic!("{first:?}") };
    assert!(since_ms <= 0, "a forgotten write with no era may be anywhere: since the beginning, not {since_ms}");
    // The dead writer wrote, then died before its DONE; its lease runs out.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = live.claim("acme", key, 3, 0).await.unwrap();
    let Claim::Recover { why: Recovery::ExpiredLease, since_ms, .. } = again else { panic!("{again:?}") };
    assert!(
        since_ms <= 0,
        "the lost write was claimed as forgotten, so it may have landed at any time: since the beginning, not {since_ms} (now {})",
        now_ms()
    );
}

/// Lanes that finish together mark DONE in one round trip (`GroupCommit`, the writer's
/// `finish`), each lane's pipeline as if sent alone; a pipeline Redis refuses fails alone, and
/// the others still run; scripts Redis does not hold are loaded first.
#[tokio::test]
async fn lanes_finishing_together_share_a_round_trip_and_a_refused_pipeline_fails_alone() {
    use crm_common::redis_conn::{add_script_call, round_trips};
    use crm_common::redis_group::GroupCommit;
    let prefix = RedisPrefix::new("claims");
    let a = claims(&prefix, "writer-a", 30_000).await;
    let era = now_ms() + 5_000;
    let tenants: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    for t in &tenants {
        assert_eq!(a.claim(t, &format!("{t}:c1:hubspot"), 1, era).await.unwrap(), Claim::Create);
    }
    // Redis has the DONE script from here on (a round trip of its own).
    assert_eq!(a.claim("warm", "warm:c1:hubspot", 1, era).await.unwrap(), Claim::Create);
    a.done("warm", "warm:c1:hubspot", 1, "rec-warm").await.unwrap();

    let group = GroupCommit::new(a.conn().clone(), vec![a.done_script().clone()]);
    let pipes: Vec<redis::Pipeline> = tenants
        .iter()
        .map(|t| {
            let mut p = redis::pipe();
            let key = format!("{t}:c1:hubspot");
            a.add_done_many(&mut p, t, &[(key.as_str(), 1, &format!("rec-{t}"))]);
            p
        })
        .collect();
    let before = round_trips();
    let answers = futures::future::join_all(pipes.into_iter().map(|p| group.send(p))).await;
    let trips = round_trips() - before;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(trips <= 2, "40 lanes finishing together took {trips} round trips");
    for t in &tenants {
        let again = a.claim(t, &format!("{t}:c1:hubspot"), 1, era).await.unwrap();
        assert_eq!(again, Claim::AlreadyDone { record_id: format!("rec-{t}") }, "{t}");
    }

    // Alone, a pipeline goes at once, in one round trip.
    let mut p = redis::pipe();
    p.cmd("SET").arg(format!("{}:alone", prefix.0)).arg("1").ignore();
    let before = round_trips();
    group.send(p).await.unwrap();
    assert_eq!(round_trips() - before, 1);

    // One refused pipeline (INCR of a text) among good ones, with a script Redis has never
    // seen: the good ones run and their callers hear Ok; the refused one hears its error.
    let fresh = redis::Script::new(&format!("-- {}\nreturn redis.call('SET', KEYS[1], ARGV[1])", uuid::Uuid::new_v4()));
    let group = GroupCommit::new(a.conn().clone(), vec![fresh.clone()]);
    let key = |n: &str| format!("{}:group:{n}", prefix.0);
    let mut text = redis::pipe();
    text.cmd("SET").arg(key("text")).arg("not a number").ignore();
    group.send(text).await.unwrap();
    let mut parts = vec![];
    for n in ["g1", "g2", "g3"] {
        let mut p = redis::pipe();
        add_script_call(&mut p, &fresh, &[key(n)]).arg("set by script").ignore();
        p.cmd("INCR").arg(key(&format!("{n}-count"))).ignore();
        parts.push(p);
    }
    let mut refused = redis::pipe();
    refused.cmd("INCR").arg(key("text")).ignore();
    parts.insert(1, refused);
    let answers = futures::future::join_all(parts.into_iter().map(|p| group.send(p))).await;
    assert!(answers[0].is_ok() && answers[2].is_ok() && answers[3].is_ok(), "{answers:?}");
    assert!(answers[1].is_err(), "the INCR of a text must fail its own caller: {answers:?}");
    let mut conn = a.conn().clone();
    for n in ["g1", "g2", "g3"] {
        let v: Option<String> = redis::cmd("GET").arg(key(n)).query_async(&mut conn).await.unwrap();
        assert_eq!(v.as_deref(), Some("set by script"), "{n}");
        // Sent with the group and again alone after the refusal: each may run twice, which
        // is why only pipelines that are safe to repeat go through a GroupCommit.
        let count: i64 = redis::cmd("GET").arg(key(&format!("{n}-count"))).query_async(&mut conn).await.unwrap();
        assert!((1..=3).contains(&count), "{n}: {count}");
    }
    let text: String = redis::cmd("GET").arg(key("text")).query_async(&mut conn).await.unwrap();
    assert_eq!(text, "not a number");
}

/// A lead's person claim (`person_claims`): one writer at a time per person; the person's
/// record kept when a write ends, with its age; a lease whose writer died is "lapsed" (its
/// create may still land); a writer that lost the claim neither ends it nor overwrites what
/// the new holder learns; fencing covers it like a lead's own key; the key holds no address.
#[tokio::test]
async fn a_persons_claim_serialises_writers_and_remembers_the_person() {
    use crm_connectors::person::PersonObject;
    use crm_connectors::person_claims::{person_key, PersonClaim, PersonClaims};
    let prefix = RedisPrefix::new("person-claims");
    let a = PersonClaims::new(claims(&prefix, "writer-a", 30_000).await, Duration::from_secs(3600));
    let b = PersonClaims::new(claims(&prefix, "writer-b", 30_000).await, Duration::from_secs(3600));
    let key = person_key("acme", "hubspot", "Jane.Doe@Customer.example");
    assert_eq!(a.take("acme", &key).await.unwrap(), PersonClaim::Free { known: None });
    assert!(matches!(b.take("acme", &key).await.unwrap(), PersonClaim::Busy { retry_after } if retry_after <= Duration::from_secs(30)));
    // Fenced like any key: a's requests go out, b's would not.
    let fa = claims(&prefix, "writer-a", 30_000).await;
    let fb = claims(&prefix, "writer-b", 30_000).await;
    assert_eq!(fa.fence("acme", &[key.as_str()]).await.unwrap(), [true]);
    assert_eq!(fb.fence("acme", &[key.as_str()]).await.unwrap(), [false]);
    let written = (PersonObject::Contact, "751".to_string());
    assert!(a.give("acme", &key, Some(&written)).await.unwrap());
    match b.take("acme", &key).await.unwrap() {
        PersonClaim::Free { known: Some(k) } => {
            assert_eq!((k.object, k.id.as_str()), (PersonObject::Contact, "751"));
            assert!(k.age < Duration::from_secs(5), "{k:?}");
        }
        other => panic!("{other:?}"),
    }
    // a no longer holds it: its give changes nothing.
    assert!(!a.give("acme", &key, Some(&(PersonObject::Lead, "00Q9".into()))).await.unwrap());
    assert!(b.give("acme", &key, None).await.unwrap(), "ended without a write: the record stays");
    // A writer that dies holding the claim: the next one finds it lapsed.
    let dead = PersonClaims::new(claims(&prefix, "writer-dead", 150).await, Duration::from_secs(3600));
    assert!(matches!(dead.take("acme", &key).await.unwrap(), PersonClaim::Free { known: Some(_) }));
    assert!(matches!(a.take("acme", &key).await.unwrap(), PersonClaim::Busy { .. }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    match a.take("acme", &key).await.unwrap() {
        PersonClaim::Lapsed { known: Some(k) } => assert_eq!(k.id, "751", "the record outlives the dead writer"),
        other => panic!("{other:?}"),
    }
    assert!(prefix.keys().iter().all(|k| k.contains(":{acme}:claim:acme:person:hubspot:") && !k.contains("jane")), "{:?}", prefix.keys());
    // Round robin: turns shared by every writer, in order.
    let turns = [
        a.next_turn("acme", "hubspot", 3).await.unwrap(),
        b.next_turn("acme", "hubspot", 3).await.unwrap(),
        a.next_turn("acme", "hubspot", 3).await.unwrap(),
        b.next_turn("acme", "hubspot", 3).await.unwrap(),
    ];
    assert_eq!(turns, [0, 1, 2, 0]);
}
