//! Redis for integration tests: the machine's Redis under a key prefix of the test's own
//! (deleted when the guard drops), or a private `redis-server` on a free port that a test
//! may stop and start again to play an outage.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

impl Drop for RedisPrefix {
    fn drop(&mut self) {
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

/// A `redis-server` of the test's own, in memory, on a free port.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port();
        let mut r = PrivateRedis { port, child: None };
        r.up();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not come up", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the outage starts now, with no goodbye to connected clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
