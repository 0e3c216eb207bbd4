//! Redis for integration tests: the machine's Redis under a key prefix of the test's own
//! (deleted when the guard drops), or a private `redis-server` on a free port that a test
//! may stop and start again to play an outage.

pub const MACHINE_REDIS: &str = "redis://127.0.0.1:6379";

/// A key prefix on the machine's Redis, unique to this test; its keys are deleted on drop.
pub struct RedisPrefix(pub String);

impl RedisPrefix {
    pub fn new(label: &str) -> RedisPrefix {
        RedisPrefix(format!("test-{label}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// A field of a hash under the prefix (`key` is the whole key).
    pub fn hget(&self, key: &str, field: &str) -> Option<String> {
        let client = redis::Client::open(MACHINE_REDIS).expect("redis url");
        let mut c = client.get_connection().expect("machine Redis at 127.0.0.1:6379");
        redis::cmd("HGET").arg(key).arg(field).query(&mut c).expect("HGET")
    }

    pub fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(MACHINE_REDIS).expect("redis url");
        let mut c = client.get_connection().expect("machine Redis at 127.0.0.1:6379");
        redis::cmd("KEYS").arg(format!("{}:*", self.0)).query(&mut c).expect("KEYS")
    }
}

impl RedisPrefix {
    /// Declares the prefix a new claim store for these tenants (see
    /// `crm_connectors::claims::declare_fresh_store`).
    pub fn fresh_claim_store(&self, tenants: &[String]) {
        self.fresh_claim_store_at(MACHINE_REDIS, tenants)
    }

    /// The same, at another Redis.
    pub fn fresh_claim_store_at(&self, url: &str, tenants: &[String]) {
        self.fresh_claim_store_on(&crm_common::redis_conn::RedisTarget::Node(url.to_string()), tenants)
    }

    /// The same, at a Redis or Redis Cluster.
    pub fn fresh_claim_store_on(&self, target: &crm_common::redis_conn::RedisTarget, tenants: &[String]) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut conn = crm_common::redis_conn::connect(target).await.expect("redis");
            crm_connectors::claims::declare_fresh_store(&mut conn, &self.0, tenants).await.expect("claims epoch");
        });
    }

    /// Deletes every key under the prefix: Redis losing its data, for this prefix.
    pub fn flush(&self) {
        self.delete_all();
    }

    fn delete_all(&self) {
        let keys = self.keys();
        if let Ok(client) = redis::Client::open(MACHINE_REDIS) {
            if let Ok(mut c) = client.get_connection() {
                for chunk in keys.chunks(1000) {
                    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query(&mut c);
                }
            }
        }
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        self.delete_all();
    }
}

/// A `redis-server` of the test's own, in memory (or with an append-only file), on a free port.
pub struct PrivateRedis(crm_dev::DevRedis, Option<std::path::PathBuf>);

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis(crm_dev::DevRedis::start(None).expect("a private redis-server"), None)
    }

    /// With an fsynced append-only file in a directory of its own.
    pub fn start_persistent() -> PrivateRedis {
        let dir = std::env::temp_dir().join(format!("crm-sync-test-redis-{}-{}", std::process::id(), rand::random::<u32>()));
        PrivateRedis(crm_dev::DevRedis::start(Some(&dir)).expect("a private redis-server"), Some(dir))
    }

    /// Everything the server holds, as text: every key with its values (strings and hash
    /// fields), then every file of its append-only directory, lossily decoded.
    pub fn dump_text(&self) -> String {
        let mut c = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        let mut out = String::new();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        for k in keys {
            out.push_str(&k);
            out.push('\n');
            let ty: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
            match ty.as_str() {
                "hash" => {
                    let h: Vec<Vec<u8>> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
                    for v in h {
                        out.push_str(&String::from_utf8_lossy(&v));
                        out.push('\n');
                    }
                }
                "string" => {
                    let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
                    out.push_str(&String::from_utf8_lossy(&v));
                    out.push('\n');
                }
                _ => {}
            }
        }
        let _: redis::RedisResult<String> = redis::cmd("BGREWRITEAOF").query(&mut c);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut dirs: Vec<std::path::PathBuf> = self.1.iter().cloned().collect();
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
        }
        out
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn up(&mut self) {
        self.0.up().expect("redis-server back up");
    }

    /// SIGKILL: the outage starts now, with no goodbye to connected clients.
    pub fn kill(&mut self) {
        self.0.kill();
    }
}

/// A Redis Cluster of the test's own: three masters without replicas on loopback ports,
/// the slots spread between them by `redis-cli --cluster create`, as a production cluster
/// is; stopped and its files deleted on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    nodes: Vec<std::process::Child>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the cluster, on other ports if one was taken between choosing it and binding
    /// it (tests run in parallel).
    pub fn start() -> RedisCluster {
        let mut why = String::new();
        for _ in 0..3 {
            match RedisCluster::start_once() {
                Ok(c) => return c,
                Err(e) => why = e,
            }
        }
        panic!("no Redis Cluster after 3 tries: {why}");
    }

    fn start_once() -> Result<RedisCluster, String> {
        use std::process::{Command, Stdio};
        let dir = std::env::temp_dir().join(format!("crm-sync-test-cluster-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports = free_port_pairs(3);
        let mut cluster = RedisCluster { ports: ports.clone(), nodes: vec![], dir: dir.clone() };
        for p in &ports {
            let node_dir = dir.join(p.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)");
            cluster.nodes.push(child);
        }
        let answers = |url: &str| {
            redis::Client::open(url).and_then(|c| c.get_connection()).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_ok()
        };
        for (url, node) in cluster.node_urls().iter().zip(cluster.nodes.iter_mut()) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !answers(url) {
                if matches!(node.try_wait(), Ok(Some(_))) || std::time::Instant::now() > deadline {
                    return Err(format!("redis-server at {url} did not start (port taken?)"));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        if !out.status.success() {
            return Err(format!("cluster create failed: {}", String::from_utf8_lossy(&out.stdout)));
        }
        for url in cluster.node_urls() {
            super::writer::wait_for("every node to see the cluster ok", std::time::Duration::from_secs(30), || {
                let info: redis::RedisResult<String> = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c));
                info.is_ok_and(|i| i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:3"))
            });
        }
        Ok(cluster)
    }

    /// Each node's own URL.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// One node to start from, as a service's `REDIS_URL` (with `REDIS_CLUSTER=true`).
    pub fn seed(&self) -> String {
        self.node_urls()[0].clone()
    }

    pub fn target(&self) -> crm_common::redis_conn::RedisTarget {
        crm_common::redis_conn::RedisTarget::Cluster(vec![self.seed()])
    }

    /// The keys under `prefix` on each node, node by node.
    pub fn keys_per_node(&self, prefix: &str) -> Vec<Vec<String>> {
        self.node_urls()
            .iter()
            .map(|u| {
                let mut c = redis::Client::open(u.as_str()).unwrap().get_connection().expect("cluster node");
                let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut c).expect("KEYS");
                keys.sort();
                keys
            })
            .collect()
    }

    /// `SCRIPT FLUSH` on every node: a cluster whose nodes restarted and lost their scripts.
    pub fn flush_scripts(&self) {
        for u in self.node_urls() {
            let mut c = redis::Client::open(u.as_str()).unwrap().get_connection().expect("cluster node");
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).expect("SCRIPT FLUSH");
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` ports free on loopback whose cluster-bus port (+10000) is free too.
fn free_port_pairs(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let p = 20_000 + rand::random::<u16>() % 30_000;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&p) && free(p) && free(p + 10_000) {
            ports.push(p);
        }
    }
    ports
}

/// How the services started by the tests (with the dev `CRM_SYNC_TOKEN_KEY`) name `matched` (a
/// number or an address) in `tenant`'s cache keys.
pub fn cache_key_name(tenant: &str, matched: &str) -> String {
    let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, crm_dev::DEV_TOKEN_KEY).expect("the dev key is base64");
    crm_connectors::contacts::KeyNames::new(&key, crm_connectors::contacts::Purpose::CacheKeys).name(tenant, matched)
}
