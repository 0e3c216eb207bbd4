//! Helpers for tests of the writers: start one as a process, block a tenant's bucket, wait.

use super::{repo_root, Broker, Proc, RedisPrefix, TempFile, MACHINE_REDIS};
use std::time::{Duration, Instant};

/// `writer --crm <crm>` against the machine's Redis under `prefix`, with the repo's contracts
/// and a short commit interval; `extra` adds or overrides variables (secrets, knobs).
pub fn spawn(broker: &Broker, crm: &str, tenants: &TempFile, prefix: &RedisPrefix, extra: &[(&str, &str)]) -> Proc {
    // The test's prefix is a new claim store: it remembers every claim from the start.
    let ids: Vec<String> = std::fs::read_to_string(tenants.path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[tenants.")?.strip_suffix(']').map(str::to_string))
        .filter(|t| !t.contains('.'))
        .collect();
    let redis = extra.iter().rev().find(|(k, _)| *k == "REDIS_URL").map_or(MACHINE_REDIS, |(_, v)| *v);
    let cluster = extra.iter().rev().find(|(k, _)| *k == "REDIS_CLUSTER").is_some_and(|(_, v)| *v == "true");
    prefix.fresh_claim_store_on(&crm_common::redis_conn::RedisTarget::new(redis, cluster).expect("REDIS_URL"), &ids);
    spawn_plain(broker, crm, tenants, prefix, extra)
}

/// `spawn`, without declaring the prefix a new claim store (a store that lost its data).
pub fn spawn_plain(broker: &Broker, crm: &str, tenants: &TempFile, prefix: &RedisPrefix, extra: &[(&str, &str)]) -> Proc {
    let contracts = repo_root().join("contracts");
    let mut env: Vec<(&str, &str)> = vec![
        ("WRITER_CRM", crm),
        ("TENANTS_CONFIG", tenants.path()),
        ("CONTRACTS_DIR", contracts.to_str().expect("utf-8 path")),
        ("REDIS_URL", MACHINE_REDIS),
        ("REDIS_KEY_PREFIX", prefix.0.as_str()),
        ("WRITER_COMMIT_INTERVAL", "100ms"),
        ("CRM_SYNC_TOKEN_KEY", crm_dev::DEV_TOKEN_KEY),
        // crm-sim applies a write late only when a test says so, and its test accounts'
        // search does not lag: read-backs need not wait the production defaults.
        ("WRITER_LATE_WRITE_HORIZON", "1s"),
        ("HUBSPOT_SEARCH_LAG", "500ms"),
        ("ZOHO_SEARCH_LAG", "500ms"),
    ];
    env.extend_from_slice(extra);
    broker.service("writer", &env)
}

/// Blocks a tenant's buckets at a CRM for `how_long`, as a 429 with a far reset would.
pub fn block_bucket(prefix: &RedisPrefix, tenant: &str, crm: &str, how_long: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = redis::Client::open(MACHINE_REDIS).expect("redis url");
        let b =
            crm_connectors::bucket::TokenBuckets::new(redis::aio::ConnectionManager::new(client).await.expect("redis").into(), &prefix.0);
        let set = crm_connectors::bucket::BucketSet { tenant_id: tenant.into(), crm: crm.into(), limits: vec![] };
        b.block(&set, how_long).await.expect("block");
    });
}

/// Lifts what `block_bucket` set.
pub fn unblock_bucket(prefix: &RedisPrefix, tenant: &str, crm: &str) {
    let key = crm_common::redis_keys::bucket_blocked(&prefix.0, tenant, crm);
    let mut conn = redis::Client::open(MACHINE_REDIS).and_then(|c| c.get_connection()).expect("redis");
    redis::cmd("DEL").arg(key).query::<i64>(&mut conn).expect("unblock");
}

/// Polls `f` until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
