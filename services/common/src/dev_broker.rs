//! `crm-sync dev-broker`: librdkafka's mock cluster, reachable by any Kafka client over
//! TCP on 127.0.0.1, with the pipeline's topics created. It has no transactions and keeps
//! everything in memory; it is for dev and tests, never for production. It also keeps only
//! the newest 5 MiB or 100,000 messages of each partition and drops older ones silently
//! (librdkafka rdkafka_mock.c), so size dev and bench backlogs to fit.

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
