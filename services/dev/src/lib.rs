//! `crm-sync dev-broker`: librdkafka's mock cluster, reachable by any Kafka client over
//! TCP on 127.0.0.1, with the pipeline's topics created. It has no transactions and keeps
//! everything in memory; it is for dev and tests, never for production. It also keeps only
//! the newest 5 MiB or 100,000 messages of each partition and drops older ones silently
//! (librdkafka rdkafka_mock.c), so size dev and bench backlogs to fit.

pub mod seed;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl DevBroker {
    pub fn start(brokers: i32, partitions: i32, topics: &[String]) -> anyhow::Result<DevBroker> {
        let cluster = MockCluster::new(brokers)?;
        for t in topics {
            cluster.create_topic(t, partitions, 1)?;
        }
        Ok(DevBroker { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

/// Starts crm-sim (the binary at `path`) on a free local port, seeded from `seed` if given,
/// and waits until it listens: answers its base URL (`CRM_SIM_URL`) and the child process.
pub fn spawn_crm_sim(path: &std::path::Path, seed: Option<&std::path::Path>, quiet: bool) -> anyhow::Result<(String, std::process::Child)> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(path);
    cmd.args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped());
    if let Some(seed) = seed {
        cmd.arg("--seed").arg(seed);
    }
    if quiet {
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", path.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
    let url = line.trim().strip_prefix("CRM_SIM_URL=").ok_or_else(|| anyhow::anyhow!("crm-sim did not start: {line:?}"))?.to_string();
    Ok((url, child))
}

/// Another binary of this workspace, installed beside the running one (target/<profile>/ or
/// the image's bin dir); dev mode and the bench start services from there.
pub fn sibling_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found: build every service first (`cargo build --release --workspace --bins`, \
         or use scripts/dev)",
        path.display()
    );
    Ok(path)
}

/// A `redis-server` of its own on a free port, for tests and the reliability bench, which
/// stop and start it to play an outage without touching the machine's Redis. With
/// `aof_dir`, it keeps an append-only file there fsynced before each reply, so a restart
/// (even after SIGKILL) comes back with every acknowledged write, as a production Redis
/// holding idempotency keys must; without, it keeps nothing and comes back empty.
pub struct DevRedis {
    pub port: u16,
    aof_dir: Option<std::path::PathBuf>,
    child: Option<std::process::Child>,
}

impl DevRedis {
    pub fn start(aof_dir: Option<&std::path::Path>) -> anyhow::Result<DevRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut r = DevRedis { port, aof_dir: aof_dir.map(Into::into), child: None };
        r.up()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers.
    pub fn up(&mut self) -> anyhow::Result<()> {
        use std::process::{Command, Stdio};
        anyhow::ensure!(self.child.is_none(), "redis-server on port {} is already running", self.port);
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        match &self.aof_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                cmd.arg("--dir").arg(dir).args(["--appendonly", "yes", "--appendfsync", "always"]);
            }
            None => {
                cmd.args(["--appendonly", "no"]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start redis-server (apt-get install redis-server): {e}"))?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // A server loading its append-only file answers LOADING until it is done.
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ok {
                return Ok(());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "redis-server on port {} did not come up", self.port);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGKILL: the outage starts now, with no goodbye to connected clients.
    /// SIGKILL, delete what it persisted, and start it again: a Redis that lost its data
    /// (a restart without persistence, a failover to a replica that had nothing).
    pub fn lose_data(&mut self) -> anyhow::Result<()> {
        self.kill();
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.up()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DevRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tansu broker (a real Kafka-protocol broker, `cargo install tansu --locked --features
/// libsql`) as a child process on a free port, with its SQLite engine in `dir/tansu.db`
/// (its memory engine returns nothing for a fetch that starts inside a record batch) and
/// its log in `dir/tansu.log`. Killed when dropped.
pub struct Tansu {
    child: std::process::Child,
    pub bootstrap: String,
}

impl Tansu {
    pub fn start(dir: &std::path::Path) -> anyhow::Result<Tansu> {
        Tansu::start_with(dir, &[])
    }

    /// With more broker flags (`--authentication`: SASL SCRAM required, users from
    /// `tansu user create`, kept in the SQLite file across restarts).
    pub fn start_with(dir: &std::path::Path, flags: &[&str]) -> anyhow::Result<Tansu> {
        use std::process::{Command, Stdio};
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("tansu.log"))?;
        // `sqlite://FILE` takes FILE relative to the working directory (an absolute path
        // loses its leading slash): run it in `dir`.
        let child = Command::new("tansu")
            .current_dir(dir)
            .args(["broker", "--storage-engine", "sqlite://tansu.db", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(flags)
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start tansu ({e}): cargo install tansu --locked --features libsql"))?;
        let tansu = Tansu { child, bootstrap: format!("127.0.0.1:{port}") };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&tansu.bootstrap).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "tansu did not listen on {}; see {}",
                tansu.bootstrap,
                dir.join("tansu.log").display()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(tansu)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `topics` with `partitions` each on a real broker (the reliability bench's tansu,
/// or a fresh Kafka), leaving topics that exist as they are.
pub fn create_topics(kafka: &crm_common::kafka::Kafka, topics: &[String], partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin = kafka.admin()?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30)));
    for r in futures::executor::block_on(admin.create_topics(&new, &opts))? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// The OAuth token store's key (`CRM_SYNC_TOKEN_KEY`) for `crm-sync dev`, benches and tests:
/// 32 bytes, base64. Production takes its own from the secret store.
pub const DEV_TOKEN_KEY: &str = "Y3JtLXN5bmMgZGV2IGFuZCB0ZXN0IHRva2VuIGtleSE=";

/// Declares `prefix` at `redis_url` a new claim store for every tenant of `tenants_file`
/// (`crm-sync dev`, benches: a key prefix or a Redis of their own, that never held claims):
/// see `claims::declare_fresh_store`.
pub fn fresh_claim_store(redis_url: &str, prefix: &str, tenants_file: &std::path::Path) -> anyhow::Result<()> {
    let ids = crm_common::tenants::Tenants::load(tenants_file)?.ids();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut conn = crm_common::redis_conn::connect_node(redis_url).await?;
        crm_connectors::claims::declare_fresh_store(&mut conn, prefix, &ids).await?;
        anyhow::Ok(())
    })
}
