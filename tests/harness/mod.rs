//! Test harness: real processes, real TCP. The dev broker (`crm-sync dev-broker`) and each
//! service run as child processes built by `cargo build --workspace --bins` (scripts/test
//! does that first); helpers produce to and read from the broker like any Kafka client.

pub mod crm_sim;
pub mod lead_suite;
pub mod otlp;
pub mod postgres;
pub mod redis;
pub mod timeline_suite;
pub mod writer;
pub mod writer_suite;

pub use self::postgres::PrivateDb;
pub use self::redis::{PrivateRedis, RedisCluster, RedisPrefix, MACHINE_REDIS};

use crm_common::kafka::reader::TopicReader;
use crm_common::kafka::{InMessage, Kafka};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// target/<profile>/, where cargo put the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe.parent().and_then(|p| p.parent()).expect("target dir").join(name);
    assert!(path.exists(), "{} is missing: run the tests with scripts/test (it builds every binary first)", path.display());
    path
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Where its stdout and stderr go, when the harness captured them.
    pub log: Option<PathBuf>,
}

impl Proc {
    /// The captured log so far ("" when there is none).
    pub fn log_text(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().expect("wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A message to produce: key, payload, headers.
pub type Msg = (String, Vec<u8>, Vec<(String, String)>);

/// `crm-sync dev-broker` in its own process.
pub struct Broker {
    pub bootstrap: String,
    _proc: Proc,
}

impl Broker {
    /// SIGKILLs the broker: it is gone, as in an outage, for every client.
    pub fn kill(&mut self) {
        self._proc.signal(libc::SIGKILL);
        let _ = self._proc.child.wait();
    }

    /// SIGSTOPs the broker: it hangs, connections open and silent (a frozen node), until
    /// dropped (SIGKILL).
    pub fn freeze(&mut self) {
        self._proc.signal(libc::SIGSTOP);
    }

    pub fn start(partitions: i32) -> Broker {
        let mut child = Command::new(bin("crm-sync"))
            .args(["dev-broker", "--partitions", &partitions.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dev broker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read bootstrap line");
        let bootstrap = line
            .trim()
            .strip_prefix("KAFKA_BOOTSTRAP_SERVERS=")
            .unwrap_or_else(|| panic!("unexpected dev-broker output {line:?}"))
            .to_string();
        Broker { bootstrap, _proc: Proc { name: "dev-broker".into(), child, log: None } }
    }

    /// Runs a service binary against this broker. Logs go to target/test-logs/.
    pub fn service(&self, name: &str, env: &[(&str, &str)]) -> Proc {
        let logs = repo_root().join("target/test-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        // One file per process started, so a test reads only its own process's lines.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = logs.join(format!("{name}-{}-{n}.log", std::process::id()));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
        let mut cmd = Command::new(bin(name));
        cmd.env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            // A killed member's partitions move after this long, not librdkafka's 45 s.
            .env("KAFKA_OPTIONS", "session.timeout.ms=6000,heartbeat.interval.ms=500")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc { name: name.to_string(), child: cmd.spawn().expect("spawn service"), log: Some(log_path) }
    }

    /// Clients of this broker, built as the services build theirs.
    pub fn kafka(&self) -> Kafka {
        Kafka::local(&self.bootstrap)
    }

    pub fn producer(&self) -> ThreadedProducer<DefaultProducerContext> {
        self.kafka().threaded_producer(&[]).expect("producer")
    }

    /// Produces and waits for every message to be acknowledged.
    pub fn produce(&self, topic: &str, messages: &[Msg]) {
        let p = self.producer();
        for (key, payload, headers) in messages {
            let mut h = OwnedHeaders::new();
            for (k, v) in headers {
                h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let mut rec = BaseRecord::to(topic).key(key).payload(payload).headers(h);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(30)).expect("flush");
    }

    pub fn reader(&self, topics: &[&str]) -> TopicReader {
        TopicReader::new(&self.kafka(), topics).expect("reader")
    }

    /// The offsets `group` has committed on `topic`, summed over partitions (a partition
    /// with no commit counts 0).
    pub fn committed(&self, group: &str, topic: &str) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = self.kafka().reader(group).expect("consumer");
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition(topic, p.id());
        }
        let total = {
            let committed = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
            committed.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0).max(0)).sum()
            // `committed` is dropped here, before the consumer (rust-rdkafka #453).
        };
        drop(c);
        total
    }

    /// Everything on `topics` once at least `n` messages have arrived (or after `timeout`).
    pub fn read(&self, topics: &[&str], n: usize, timeout: Duration) -> Vec<InMessage> {
        self.reader(topics).read_until(timeout, |m| m.len() >= n)
    }
}

pub use crm_common::events::fixtures::normalised_call;

/// A TENANTS_CONFIG file in a fresh temp dir, removed with the guard.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, contents: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("crm-sync-test-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
