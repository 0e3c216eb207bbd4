//! Every Redis store crm-sync has, on a real Redis Cluster of three masters that the test
//! starts (`RedisCluster`): the deduper's marks, the writers' claims (with fencing), token
//! buckets (take, settle, block), the contact cache, and prefix cleanup. The tenants are
//! chosen so that their hash tags land on every master: a script or pipeline that crossed
//! slots, or a command sent to the wrong node, fails here (CROSSSLOT, MOVED) where one node
//! would accept it. The services themselves on a cluster: the writer suite's
//! `the_writer_runs_on_a_redis_cluster` and the deduper test below.

use crm_common::codec;
use crm_common::dedup::{DedupStore, Mark, MarkRequest};
use crm_common::events::*;
use crm_common::redis_conn::{self, RedisConn};
use crm_connectors::bucket::{BucketSet, Limit, Take, TokenBuckets};
use crm_connectors::claims::{Claim, Claims, Timing};
use crm_connectors::contacts::ContactCache;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::{normalised_call, Broker, RedisCluster, TempFile};
use std::collections::HashSet;
use std::time::Duration;

/// Tenants whose hash tags fall on all three masters: `redis-cli --cluster create` gives
/// three masters slots 0-5460, 5461-10922 and 10923-16383, and CRC16 of these names puts four
/// in each (the tests check the spread rather than trust it).
fn tenants() -> Vec<String> {
    (0..12).map(|i| format!("tenant-{i}")).collect()
}

/// The nodes (by index) that hold at least one key of `tenant` under `prefix`.
fn nodes_of(cluster: &RedisCluster, prefix: &str, tenant: &str) -> HashSet<usize> {
    let tag = format!("{prefix}:{{{tenant}}}:");
    cluster.keys_per_node(prefix).iter().enumerate().filter(|(_, keys)| keys.iter().any(|k| k.starts_with(&tag))).map(|(i, _)| i).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_works_on_a_three_master_cluster_with_tenants_on_every_node() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let conn: RedisConn = redis_conn::connect(&cluster.target()).await.expect("cluster");
    assert!(conn.is_cluster());
    let prefix = "rc";
    let ts = tenants();

    // Dedup marks: one batch mixing every tenant, with several versions of one call each,
    // interleaved. On a cluster each tenant's marks go as a pipeline of their own; the
    // answers must still come back in request order.
    let store = DedupStore::connect(&cluster.target(), prefix).await.expect("dedup store");
    let mut reqs = Vec::new();
    for v in [1, 1, 2, 1] {
        for t in &ts {
            reqs.push(MarkRequest {
                tenant_id: t.clone(),
                call_id: "c1".into(),
                version: v,
                input: format!("in/{t}/{v}/{}", reqs.len()),
                window_ms: 60_000,
            });
        }
    }
    let marks = store.mark_many(&reqs).await.expect("marks on the cluster");
    let n = ts.len();
    assert!(marks[..n].iter().all(|m| *m == Mark::New), "{:?}", &marks[..n]);
    assert!(marks[n..2 * n].iter().all(|m| matches!(m, Mark::Repeat { marked_version: 1, .. })), "{:?}", &marks[n..2 * n]);
    assert!(marks[2 * n..3 * n].iter().all(|m| matches!(m, Mark::Update { previous_version: 1, .. })), "{:?}", &marks[2 * n..3 * n]);
    assert!(marks[3 * n..].iter().all(|m| matches!(m, Mark::Repeat { marked_version: 2, .. })), "{:?}", &marks[3 * n..]);
    let spread: HashSet<usize> = ts.iter().flat_map(|t| nodes_of(&cluster, prefix, t)).collect();
    assert_eq!(spread.len(), 3, "the tenants' keys are on every master");
    for t in &ts {
        assert_eq!(nodes_of(&cluster, prefix, t).len(), 1, "one tenant's keys share one slot: {t}");
    }

    // Nodes that lost their scripts (a restart): every store loads them again (NOSCRIPT).
    // The update's inputs, delivered again, find their own marks.
    cluster.flush_scripts();
    let again = store.mark_many(&reqs[2 * n..3 * n]).await.expect("marks after SCRIPT FLUSH");
    assert!(again.iter().all(|m| *m == Mark::Redelivered), "{again:?}");

    // Claims: claim, fence (several keys of one tenant in one script), done, duplicate.
    let timing = Timing {
        lease: Duration::from_secs(30),
        request_timeout: Duration::ZERO,
        late_write_horizon: Duration::ZERO,
        clock_skew: Duration::from_secs(1),
    };
    crm_connectors::claims::declare_fresh_store(&mut conn.clone(), prefix, &ts).await.expect("epochs");
    let claims = Claims::new(conn.clone(), prefix, "writer-a", timing, Duration::from_secs(3600));
    let era = now_ms() + 5_000;
    for t in &ts {
        let (k1, k2) = (format!("{t}:c1:hubspot"), format!("{t}:c2:hubspot"));
        assert_eq!(claims.claim(t, &k1, 1, era).await.expect("claim"), Claim::Create, "{t}");
        assert_eq!(claims.claim(t, &k2, 1, era).await.expect("claim"), Claim::Create, "{t}");
        assert_eq!(claims.fence(t, &[&k1, &k2]).await.expect("fence"), vec![true, true], "{t}");
        claims.done(t, &k1, 1, "rec-1").await.expect("done");
        assert_eq!(claims.claim(t, &k1, 1, era).await.expect("claim"), Claim::AlreadyDone { record_id: "rec-1".into() });
        assert!(claims.release(t, &k2).await.expect("release"));
    }

    // Lanes of tenants on every node finishing together (the writer's `finish`): each
    // tenant's pipeline goes to its own slot, and every DONE lands.
    let group = crm_common::redis_group::GroupCommit::new(conn.clone(), vec![claims.done_script().clone()]);
    for t in &ts {
        assert_eq!(claims.claim(t, &format!("{t}:c3:hubspot"), 1, era).await.expect("claim"), Claim::Create);
    }
    let pipes = ts.iter().map(|t| {
        let mut p = redis::pipe();
        claims.add_done_many(&mut p, t, &[(format!("{t}:c3:hubspot").as_str(), 1, "rec-3")]);
        p
    });
    let answers = futures::future::join_all(pipes.map(|p| group.send(p))).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    for t in &ts {
        let again = claims.claim(t, &format!("{t}:c3:hubspot"), 1, era).await.expect("claim");
        assert_eq!(again, Claim::AlreadyDone { record_id: "rec-3".into() }, "{t}");
    }

    // Token buckets: an all-or-nothing take over two limits, settled, and a block.
    let buckets = TokenBuckets::new(conn.clone(), prefix).with_lease(Duration::from_secs(5));
    for t in &ts {
        let set = BucketSet {
            tenant_id: t.clone(),
            crm: "hubspot".into(),
            limits: vec![
                Limit::Rolling { name: "burst".into(), max: 2, window: Duration::from_secs(10), margin: Duration::ZERO },
                Limit::Daily { name: "daily".into(), max: 100, tz_offset_min: 0 },
            ],
        };
        assert_eq!(buckets.try_take_each(&set, &[1, 1], 0, "r1").await.expect("take"), Take::Granted);
        buckets.settle(&set, "r1", &[1, 1], &[]).await.expect("settle");
        assert_eq!(buckets.try_take(&set, 1, 0).await.expect("take"), Take::Granted);
        assert!(matches!(buckets.try_take(&set, 1, 0).await.expect("take"), Take::Wait(_)), "{t}: the third token in the window");
        buckets.block(&set, Duration::from_secs(5)).await.expect("block");
        assert_eq!(buckets.used(&set).await.expect("used"), vec![("burst".to_string(), 2), ("daily".to_string(), 2)]);
    }

    // The contact cache: one pipeline of SETs and one MGET per tenant.
    let names = crm_connectors::contacts::KeyNames::new(b"a deployment's key", crm_connectors::contacts::Purpose::CacheKeys);
    let contacts = ContactCache::contacts(conn.clone(), prefix.to_string(), names, Duration::from_secs(60), Duration::from_secs(10));
    for t in &ts {
        let found = vec![("+14155550001".to_string(), Some(format!("{t}-1"))), ("+14155550002".to_string(), None)];
        contacts.put_many(t, "hubspot", &found).await.expect("put_many");
        let got = contacts
            .get_many(t, "hubspot", &["+14155550001".into(), "+14155550002".into(), "+14155550003".into()])
            .await
            .expect("get_many");
        assert_eq!(got, vec![Some(Some(format!("{t}-1"))), Some(None), None]);
        contacts.forget(t, "hubspot", "+14155550001").await.expect("forget");
        assert_eq!(contacts.get(t, "hubspot", "+14155550001").await.expect("get"), None);
    }
    for t in &ts {
        assert_eq!(nodes_of(&cluster, prefix, t).len(), 1, "still one slot per tenant after every store wrote: {t}");
    }
    let names: Vec<String> = cluster.keys_per_node(prefix).into_iter().flatten().collect();
    assert!(names.iter().all(|k| !k.contains("+1415555")), "no number in a key name: {names:?}");

    // Cleanup scans every primary.
    let before: usize = cluster.keys_per_node(prefix).iter().map(Vec::len).sum();
    let deleted = redis_conn::delete_prefix(&conn, prefix).await.expect("delete_prefix");
    assert_eq!(deleted as usize, before);
    assert!(cluster.keys_per_node(prefix).iter().all(Vec::is_empty), "keys left: {:?}", cluster.keys_per_node(prefix));
}

/// The deduper as a process on the cluster (`REDIS_CLUSTER=true`, one seed node): many
/// tenants' calls, with repeats and an update, fan out exactly as on one node, and the marks
/// land on every master. (How the broker delivers decides whether a batch mixes tenants;
/// the test above sends such batches to the store directly.)
#[test]
fn the_deduper_marks_many_tenants_on_a_cluster() {
    let cluster = RedisCluster::start();
    let broker = Broker::start(2);
    let ts = tenants();
    let mut toml = String::new();
    for t in &ts {
        toml.push_str(&format!(
            "[tenants.{t}]\ndefault_region = \"US\"\n[tenants.{t}.crms.hubspot]\nplan = \"professional\"\ncredentials_secret = \"X_HUBSPOT\"\n"
        ));
    }
    let tenants_file = TempFile::new("tenants.toml", &toml);
    let seed = cluster.seed();
    let env = [
        ("TENANTS_CONFIG", tenants_file.path()),
        ("REDIS_URL", seed.as_str()),
        ("REDIS_CLUSTER", "true"),
        ("REDIS_KEY_PREFIX", "rc-deduper"),
        ("PIPELINE_COMMIT_INTERVAL_MS", "100"),
    ];
    let mut inputs = Vec::new();
    for v in [1, 1, 2] {
        for t in &ts {
            let c = normalised_call(t, "c1", v);
            inputs.push((c.tenant_id.clone(), codec::encode(&c).unwrap(), vec![]));
        }
    }
    broker.produce("calls.normalised", &inputs);
    let deduper = broker.service("deduper", &env);
    // Each tenant: the call and its update written; the repeat suppressed.
    let seen = broker.read(&["crm.writes.hubspot"], 2 * ts.len(), Duration::from_secs(60));
    let writes: Vec<CrmWriteRequest> = seen.iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    assert_eq!(writes.len(), 2 * ts.len());
    for t in &ts {
        let versions: Vec<i64> = writes.iter().filter(|w| &w.tenant_id == t).map(|w| w.version).collect();
        assert_eq!(versions, vec![1, 2], "{t}");
    }
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed("deduper", "calls.normalised") == inputs.len() as i64);
    let marks: Vec<String> = cluster.keys_per_node("rc-deduper").concat();
    assert_eq!(marks.len(), ts.len(), "one mark per tenant's call: {marks:?}");
    assert!(cluster.keys_per_node("rc-deduper").iter().all(|k| !k.is_empty()), "marks on every master");
    assert!(deduper.terminate().success());
}
