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
