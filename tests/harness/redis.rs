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
    /// `crm_common::claims::declare_fresh_store`).
    pub fn fresh_claim_store(&self, tenants: &[String]) {
        let client = redis::Client::open(MACHINE_REDIS).expect("redis url");
        let mut c = client.get_connection().expect("machine Redis at 127.0.0.1:6379");
        for t in tenants {
            let _: redis::RedisResult<()> = redis::cmd("SET").arg(format!("{}:{{{t}}}:claims-epoch", self.0)).arg(1).arg("NX").query(&mut c);
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

/// A `redis-server` of the test's own, in memory, on a free port.
pub struct PrivateRedis(crm_common::dev_broker::DevRedis);

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis(crm_common::dev_broker::DevRedis::start(None).expect("a private redis-server"))
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
