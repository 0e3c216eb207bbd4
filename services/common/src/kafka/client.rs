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

/// The secret holding the Kafka SASL password, when `KAFKA_OPTIONS` does not.
pub const SASL_PASSWORD_SECRET: &str = "KAFKA_SASL_PASSWORD";

/// Settings whose values are credentials: never shown (`Debug`).
const SECRET_SETTINGS: [&str; 4] = ["sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"];

/// How to reach the broker: where it is, and the operator's extra librdkafka settings.
#[derive(Clone)]
pub struct Kafka {
    bootstrap: String,
    options: Vec<(String, String)>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), if SECRET_SETTINGS.contains(&k.as_str()) { "(not shown)" } else { v.as_str() }))
            .collect();
        f.debug_struct("Kafka").field("bootstrap", &self.bootstrap).field("options", &shown).finish()
    }
}

/// Which kind of librdkafka client a configuration is for (an admin client is a producer
/// handle in librdkafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Consumer,
    Producer,
}

/// The librdkafka properties meant for consumers only, and for producers only: the `C` and
/// `P` rows of the C/P column of librdkafka's CONFIGURATION.md (2.12.1, the version rdkafka
/// 0.39 bundles), global and topic properties alike. The operator's `KAFKA_OPTIONS` apply
/// to every client, and librdkafka warns at start (`CONFWARN … is a consumer property and
/// will be ignored by this producer instance`) for each one set on the other kind, so each
/// is set only where it applies. Every other property (`*`: security, SASL, TLS, timeouts,
/// client.id, …) is set on every client, and a property librdkafka does not know still fails
/// every client.
const CONSUMER_ONLY: &[&str] = &[
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "check.crcs",
    "consume.callback.max.messages",
    "consume_cb",
    "coordinator.query.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "fetch.wait.max.ms",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "offset_commit_cb",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "rebalance_cb",
    "session.timeout.ms",
];

/// See [`CONSUMER_ONLY`].
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.level",
    "compression.type",
    "delivery.report.only.error",
    "delivery.timeout.ms",
    "dr_cb",
    "dr_msg_cb",
    "enable.gapless.guarantee",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "msg_order_cmp",
    "partitioner",
    "partitioner_cb",
    "produce.offset.report",
    "queue.buffering.backpressure.threshold",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "queuing.strategy",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "sticky.partitioning.linger.ms",
    "transaction.timeout.ms",
    "transactional.id",
];

impl Role {
    /// Whether the operator's option `key` is for this kind of client.
    fn takes(self, key: &str) -> bool {
        let other = match self {
            Role::Consumer => PRODUCER_ONLY,
            Role::Producer => CONSUMER_ONLY,
        };
        !other.contains(&key)
    }
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

    pub fn from_args(common: &CommonArgs) -> anyhow::Result<Kafka> {
        Kafka::from_kafka_args(&common.kafka)
    }

    /// The operator's settings; the SASL password, where `KAFKA_OPTIONS` sets none, from the
    /// secret `KAFKA_SASL_PASSWORD` (a file in `CRM_SYNC_SECRETS_DIR`, else the variable), so
    /// it can live in a Secret apart from the rest. librdkafka reads it when a client is made:
    /// a rotated password takes a restart.
    pub fn from_kafka_args(args: &KafkaArgs) -> anyhow::Result<Kafka> {
        let mut options = args.kafka_options.clone();
        if !options.iter().any(|(k, _)| k == "sasl.password") {
            if let Some(s) = crate::secrets::read(SASL_PASSWORD_SECRET).map_err(anyhow::Error::msg)? {
                options.push(("sasl.password".into(), s.text.trim_end_matches(['\r', '\n']).to_string()));
            }
        }
        Ok(Kafka::new(args.kafka_bootstrap_servers.clone(), options))
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The librdkafka settings of a `role` client: bootstrap, `defaults`, then the options
    /// meant for its kind of client (see [`CONSUMER_ONLY`]).
    fn config(&self, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.options.iter().filter(|(k, _)| role.takes(k)) {
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
        self.config(Role::Consumer, &defaults)
    }

    /// A consumer that reads partitions it assigns itself and commits nothing (`purpose`
    /// names it in the broker's logs; it never joins that group).
    pub fn reader(&self, purpose: &str) -> anyhow::Result<BaseConsumer> {
        let mut defaults = READER.to_vec();
        defaults.push(("group.id", purpose));
        Ok(BaseConsumer::from_config(&self.config(Role::Consumer, &defaults))?)
    }

    /// A reader like [`Kafka::reader`], for an async loop, with a role's `settings` after
    /// the reader defaults (the writer's backlog passes: a small prefetch).
    pub fn stream_reader(&self, purpose: &str, settings: &[(&str, &str)]) -> anyhow::Result<StreamConsumer> {
        let mut defaults = READER.to_vec();
        defaults.push(("group.id", purpose));
        defaults.extend_from_slice(settings);
        Ok(StreamConsumer::from_config(&self.config(Role::Consumer, &defaults))?)
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
        Ok(FutureProducer::from_config(&self.config(Role::Producer, &defaults))?)
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
        Ok(ThreadedProducer::from_config_and_context(&self.config(Role::Producer, &defaults), context)?)
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(AdminClient::from_config(&self.config(Role::Producer, &[]))?)
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
            let kafka = Kafka::from_args(&cli.common).unwrap();
            let _producer = kafka.producer().unwrap_or_else(|e| panic!("{options}: {e}"));
            kafka.reader("t").unwrap_or_else(|e| panic!("{options}: {e}"));
        }
    }

    #[test]
    fn credentials_in_the_settings_are_never_shown() {
        let kafka = Kafka::new("a:1", vec![("sasl.username".into(), "crm-sync".into()), ("sasl.password".into(), "s3cret".into())]);
        let shown = format!("{kafka:?}");
        assert!(shown.contains("crm-sync") && shown.contains("(not shown)") && !shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn the_operators_options_win_over_every_roles_defaults() {
        let kafka = Kafka::new("a:1", vec![("linger.ms".into(), "50".into()), ("fetch.wait.max.ms".into(), "500".into())]);
        let c = kafka.config(Role::Producer, PRODUCER);
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        let c = kafka.config(Role::Consumer, READER);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(c.get("bootstrap.servers"), Some("a:1"));
    }

    /// `KAFKA_OPTIONS` apply to every client, but a consumer's property on a producer (or the
    /// reverse) made librdkafka warn at start (CONFWARN): each is set only where it applies.
    #[test]
    fn an_option_for_one_kind_of_client_is_set_on_that_kind_only() {
        let options = [
            ("fetch.wait.max.ms", "500"),
            ("session.timeout.ms", "30000"),
            ("linger.ms", "50"),
            ("batch.num.messages", "5000"),
            ("security.protocol", "ssl"),
            ("client.id", "x"),
        ];
        let kafka = Kafka::new("a:1", options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let consumer = kafka.group_config("g", &[]);
        let producer = kafka.config(Role::Producer, PRODUCER);
        for (k, v) in [("fetch.wait.max.ms", "500"), ("session.timeout.ms", "30000"), ("security.protocol", "ssl"), ("client.id", "x")] {
            assert_eq!(consumer.get(k), Some(v), "consumer {k}");
        }
        assert_eq!((consumer.get("linger.ms"), consumer.get("batch.num.messages")), (None, None));
        for (k, v) in [("linger.ms", "50"), ("batch.num.messages", "5000"), ("security.protocol", "ssl"), ("client.id", "x")] {
            assert_eq!(producer.get(k), Some(v), "producer {k}");
        }
        assert_eq!((producer.get("fetch.wait.max.ms"), producer.get("session.timeout.ms")), (None, None));
        // And the clients are built: librdkafka accepts every configuration.
        let _producer = kafka.producer().expect("producer");
        kafka.admin().expect("admin");
        kafka.reader("t").expect("reader");
    }

    #[test]
    fn a_full_prefetch_is_fetched_again_within_the_fetch_wait() {
        // librdkafka's default puts a partition with a full prefetch off for a second: under
        // a backlog every stage then ran at a fraction of its pace (`bench normaliser`).
        let kafka = Kafka::local("a:1");
        let (group, reader) = (kafka.group_config("g", &[]), kafka.config(Role::Consumer, READER));
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
