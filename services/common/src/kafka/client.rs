//! The one place Kafka clients are built. Every consumer, producer, reader and admin client
//! of every binary (the services, the reconciler, `crm-sync backfill`, `dlq replay`, `dev`,
//! the bench and the tests) comes from a [`Kafka`]: the bootstrap servers, each role's
//! defaults, then the operator's `KAFKA_OPTIONS` (security.protocol, sasl.*, ssl.*,
//! session.timeout.ms, …), which win. A client built anywhere else would miss the options
//! and so could not reach a broker that needs TLS or SASL.

use crate::config::{CommonArgs, KafkaArgs};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{DefaultProducerContext, FutureProducer, ProducerContext, ThreadedProducer};

/// How to reach the broker: where it is, and the operator's extra librdkafka settings.
#[derive(Debug, Clone)]
pub struct Kafka {
    bootstrap: String,
    options: Vec<(String, String)>,
}

/// What every producer is: idempotent, acknowledged by all in-sync replicas, so a retry by
/// librdkafka never writes a record twice.
const PRODUCER: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all"), ("linger.ms", "5"), ("compression.type", "lz4")];

/// What every reader outside a consumer group is: it commits nothing, sees new messages
/// within tens of ms, and never jumps to the end silently when the beginning is gone.
const READER: &[(&str, &str)] =
    &[("enable.auto.commit", "false"), ("fetch.wait.max.ms", "20"), ("fetch.queue.backoff.ms", "20"), ("auto.offset.reset", "earliest")];

/// How long a consumer group member's fetch may wait at the broker for data, in ms. With
/// librdkafka's 500 ms a broker that holds an empty fetch for its whole wait (librdkafka's
/// mock cluster does; a Kafka broker answers as data arrives) held each input up to half a
/// second per stage: about 1 s from calls.raw to the CRM. At 20 ms the whole path's p99 is
/// tens of ms; the cost is an empty fetch every 20 ms per broker while idle (`bench
/// writer` prints the services' idle CPU at both).
///
/// The same bound holds when a partition's prefetch is full (`CONSUMER_PREFETCH_KIB`):
/// librdkafka then puts the partition's next fetch off by `fetch.queue.backoff.ms`, 1 s by
/// default, so a stage that drained its 8 MiB in tens of ms then fetched nothing for the
/// rest of the second. Under a backlog every stage ran at that pace: `bench normaliser`'s
/// passthrough copied 84–89k messages/s, 361–452k/s with the backoff at the fetch wait
/// (the normaliser 92k → 142–157k/s, the deduper 48k → 92–99k/s). The backoff only
/// applies while a prefetch is full, so an idle consumer costs nothing more.
pub const CONSUMER_FETCH_WAIT_MS: u64 = 20;

/// How much a group member reads ahead of what it has handed on, in KiB. librdkafka's
/// default, 64 MiB, was most of a stage's RSS under a backlog (`bench normaliser`). 8 MiB
/// is thousands of messages, many batches ahead of any stage, so throughput is unchanged.
/// Every group member has it, the writer's consumer as well as the pipeline stages'.
pub const CONSUMER_PREFETCH_KIB: u64 = 8192;

impl Kafka {
    pub fn new(bootstrap: impl Into<String>, options: Vec<(String, String)>) -> Kafka {
        Kafka { bootstrap: bootstrap.into(), options }
    }

    /// A broker this process started itself (crm-sync dev, the bench, tests): no options.
    pub fn local(bootstrap: impl Into<String>) -> Kafka {
        Kafka::new(bootstrap, vec![])
    }

    pub fn from_args(common: &CommonArgs) -> Kafka {
        Kafka::from_kafka_args(&common.kafka)
    }

    pub fn from_kafka_args(args: &KafkaArgs) -> Kafka {
        Kafka::new(args.kafka_bootstrap_servers.clone(), args.kafka_options.clone())
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The librdkafka settings of a client: bootstrap, `defaults`, then the options.
    fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    /// A member of consumer group `group`, with its role's `settings` (commit policy,
    /// statistics) and `context` (rebalance and statistics callbacks).
    pub fn group_consumer<C: ConsumerContext + 'static>(
        &self,
        group: &str,
        settings: &[(&str, &str)],
        context: C,
    ) -> anyhow::Result<StreamConsumer<C>> {
        Ok(StreamConsumer::from_config_and_context(&self.group_config(group, settings), context)?)
    }

    /// A group member's librdkafka settings (see [`Kafka::group_consumer`]).
    fn group_config(&self, group: &str, settings: &[(&str, &str)]) -> ClientConfig {
        let (wait, prefetch) = (CONSUMER_FETCH_WAIT_MS.to_string(), CONSUMER_PREFETCH_KIB.to_string());
        let mut defaults = vec![
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", wait.as_str()),
            ("fetch.queue.backoff.ms", wait.as_str()),
            ("queued.max.messages.kbytes", prefetch.as_str()),
        ];
        defaults.extend_from_slice(settings);
        self.config(&defaults)
    }

    /// A consumer that reads partitions it assigns itself and commits nothing (`purpose`
    /// names it in the broker's logs; it never joins that group).
    pub fn reader(&self, purpose: &str) -> anyhow::Result<BaseConsumer> {
        let mut defaults = READER.to_vec();
        defaults.push(("group.id", purpose));
        Ok(BaseConsumer::from_config(&self.config(&defaults))?)
    }

    /// A reader like [`Kafka::reader`], for an async loop, with a role's `settings` after
    /// the reader defaults (the writer's backlog passes: a small prefetch).
    pub fn stream_reader(&self, purpose: &str, settings: &[(&str, &str)]) -> anyhow::Result<StreamConsumer> {
        let mut defaults = READER.to_vec();
        defaults.push(("group.id", purpose));
        defaults.extend_from_slice(settings);
        Ok(StreamConsumer::from_config(&self.config(&defaults))?)
    }

    /// The producer every stage and tool uses.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.producer_with(&[])
    }

    /// The same producer with a role's `settings` (a tool that gives up sooner than a
    /// service: `message.timeout.ms`).
    pub fn producer_with(&self, settings: &[(&str, &str)]) -> anyhow::Result<FutureProducer> {
        let mut defaults = PRODUCER.to_vec();
        defaults.extend_from_slice(settings);
        Ok(FutureProducer::from_config(&self.config(&defaults))?)
    }

    /// A producer with its own polling thread, for synchronous tools (the bench's and dev's
    /// sources, tests); `settings` after the producer defaults (e.g. `linger.ms`).
    pub fn threaded_producer(&self, settings: &[(&str, &str)]) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
        self.producer_with_context(settings, DefaultProducerContext)
    }

    /// A producer with its own polling thread whose delivery reports go to `context` (the
    /// stages' loop counts them per input: `pipeline`).
    pub fn producer_with_context<C: ProducerContext>(&self, settings: &[(&str, &str)], context: C) -> anyhow::Result<ThreadedProducer<C>> {
        let mut defaults = PRODUCER.to_vec();
        defaults.extend_from_slice(settings);
        Ok(ThreadedProducer::from_config_and_context(&self.config(&defaults), context)?)
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(AdminClient::from_config(&self.config(&[]))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_tls_and_sasl_options_are_accepted() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonArgs,
        }
        // librdkafka refuses these at configuration time when built without OpenSSL.
        for options in [
            "security.protocol=SSL,ssl.endpoint.identification.algorithm=https",
            "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=crm-sync,sasl.password=s3cret",
            "security.protocol=SASL_SSL,sasl.mechanisms=PLAIN,sasl.username=crm-sync,sasl.password=s3cret",
        ] {
            let cli = Cli::parse_from(["t", "--kafka-bootstrap-servers", "broker.example:9093", "--kafka-options", options]);
            let kafka = Kafka::from_args(&cli.common);
            let _producer = kafka.producer().unwrap_or_else(|e| panic!("{options}: {e}"));
            kafka.reader("t").unwrap_or_else(|e| panic!("{options}: {e}"));
        }
    }

    #[test]
    fn the_operators_options_win_over_every_roles_defaults() {
        let kafka = Kafka::new("a:1", vec![("linger.ms".into(), "50".into()), ("fetch.wait.max.ms".into(), "500".into())]);
        let c = kafka.config(PRODUCER);
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        let c = kafka.config(READER);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(c.get("bootstrap.servers"), Some("a:1"));
    }

    #[test]
    fn a_full_prefetch_is_fetched_again_within_the_fetch_wait() {
        // librdkafka's default puts a partition with a full prefetch off for a second: under
        // a backlog every stage then ran at a fraction of its pace (`bench normaliser`).
        let kafka = Kafka::local("a:1");
        let (group, reader) = (kafka.group_config("g", &[]), kafka.config(READER));
        for (role, c) in [("group member", &group), ("reader", &reader)] {
            let ms = |k: &str| c.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{role}: {k} unset"));
            assert!(ms("fetch.queue.backoff.ms") <= ms("fetch.wait.max.ms"), "{role}");
            assert!(ms("fetch.wait.max.ms") <= CONSUMER_FETCH_WAIT_MS, "{role}");
        }
        assert_eq!(group.get("queued.max.messages.kbytes"), Some(CONSUMER_PREFETCH_KIB.to_string().as_str()));
    }

    #[test]
    fn a_bad_option_fails_every_client_the_same_way() {
        let kafka = Kafka::new("a:1", vec![("no.such.property".into(), "1".into())]);
        let errors = [kafka.producer().err(), kafka.reader("t").err(), kafka.threaded_producer(&[]).err(), kafka.admin().err()];
        for e in errors {
            let e = e.expect("refused").to_string();
            assert!(e.contains("no.such.property"), "{e}");
        }
    }
}
