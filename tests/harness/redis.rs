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
        let client = redis::Client::open(url).expect("redis url");
        let mut c = client.get_connection().expect("machine Redis at 127.0.0.1:6379");
        for t in tenants {
            let _: redis::RedisResult<()> =
                redis::cmd("SET").arg(format!("{}:{{{t}}}:claims-epoch", self.0)).arg(1).arg("NX").query(&mut c);
        }
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
