//! The consume → process → produce → commit loop every stream stage runs (DESIGN §1).
//!
//! At-least-once, without transactions (the dev broker has none): an input's offset is
//! *stored* only after every output it produced (its results, audit and DLQ records) is
//! acknowledged by the broker, and only stored offsets are ever committed. Inputs are
//! acknowledged in the order they were read, so a stored offset never passes an input whose
//! outputs are still in flight. A crash therefore redelivers, never loses; downstream stages
//! make the redelivered duplicates harmless.
//!
//! The producer is idempotent with acks=all, so broker-side retries do not duplicate.

use crate::config::{CommonArgs, PipelineArgs};
use crate::telemetry::StageMetrics;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::error::KafkaError;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub const TRACEPARENT: &str = "traceparent";
/// Set by `crm-sync dlq replay`; stages copy it into DeadLetter.replay_count so replay
/// loops can be stopped.
pub const REPLAY_COUNT: &str = "crm-sync-replay-count";
/// Set by the reconciler (and `dlq replay` of its entries) on a write request whose record
/// is gone from the CRM: the value is the gone record's id, and the writer creates again
/// only while its claim still names that record.
pub const RECREATE: &str = "crm-sync-recreate";
/// Set by `crm-sync backfill` on the calls it re-reads (the value is the run's id). The
/// normaliser carries it forward and the deduper lets such a call through even when its
/// mark says it was seen: the writer's claim is what keeps a backfill from writing twice.
pub const BACKFILL: &str = "crm-sync-backfill";

/// An input message, owned, so handlers can hold it across awaits.
#[derive(Debug, Clone)]
pub struct InMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// From the `traceparent` header, or new when the producer sent none.
    pub trace_id: String,
}

impl InMessage {
    pub fn from_kafka(m: &BorrowedMessage<'_>) -> InMessage {
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let trace_id = headers
            .iter()
            .find(|(k, _)| k == TRACEPARENT)
            .and_then(|(_, v)| parse_traceparent(v))
            .unwrap_or_else(new_trace_id);
        InMessage {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            headers,
            trace_id,
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    pub fn key_str(&self) -> Option<String> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_string)
    }

    pub fn replay_count(&self) -> i32 {
        self.header(REPLAY_COUNT)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// A W3C traceparent's trace id, if the header is well formed.
pub fn parse_traceparent(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split('-');
    let (_ver, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}

pub fn new_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>() | 1)
}

/// A message to produce. Keyed by tenant so one tenant's events stay in order.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl OutRecord {
    pub fn new(topic: &str, key: &str, payload: Vec<u8>, trace_id: &str) -> OutRecord {
        let traceparent = format!("00-{trace_id}-{:016x}-01", rand::random::<u64>() | 1);
        OutRecord {
            topic: topic.to_string(),
            key: key.to_string(),
            payload,
            headers: vec![(TRACEPARENT.to_string(), traceparent)],
        }
    }

    /// Names the span this record was made under as the next stage's parent.
    pub fn set_traceparent(&mut self, value: String) {
        match self.headers.iter_mut().find(|(k, _)| k == TRACEPARENT) {
            Some(h) => h.1 = value,
            None => self.headers.push((TRACEPARENT.to_string(), value)),
        }
    }
}

/// What a handler made of one input: what to produce, and an outcome label for metrics
/// and the progress log.
#[derive(Debug)]
pub struct Processed {
    pub outputs: Vec<OutRecord>,
    pub outcome: &'static str,
}

/// A failure that is not the input's fault (Redis down, a dependency timing out): the
/// loop retries the same batch with backoff and commits nothing meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// A stage's logic. `handle` gets a batch of inputs in read order and returns one
/// `Processed` per input, in the same order.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        batch: &[InMessage],
    ) -> impl Future<Output = Result<Vec<Processed>, Transient>> + Send;
}

pub struct PipelineConfig {
    /// The service name: default consumer group and the stage label in metrics and logs.
    pub service: &'static str,
    pub input_topics: Vec<String>,
    pub common: CommonArgs,
    pub args: PipelineArgs,
}

/// librdkafka settings: the bootstrap servers, our `defaults`, then the operator's
/// `KAFKA_OPTIONS` (security.protocol, sasl.*, session.timeout.ms, …), which win.
pub fn client_config(common: &CommonArgs, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &common.kafka_bootstrap_servers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &common.kafka_options {
        c.set(k, v);
    }
    c
}

/// The producer every stage uses: idempotent, acks from all in-sync replicas.
pub fn producer(common: &CommonArgs) -> anyhow::Result<FutureProducer> {
    let defaults = [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
    ];
    Ok(client_config(common, &defaults).create()?)
}

/// Records consumer lag from librdkafka's statistics and logs rebalances.
pub struct StageContext {
    metrics: StageMetrics,
}

impl ClientContext for StageContext {
    fn stats(&self, stats: Statistics) {
        self.metrics.record_lag(stats);
    }
}

impl ConsumerContext for StageContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        info!(?rebalance, "partitions rebalanced");
    }
}

struct Pending {
    topic: String,
    partition: i32,
    offset: i64,
    deliveries: Vec<(String, rdkafka::producer::DeliveryFuture)>,
}

/// Runs `handler` over the input topics until `shutdown` is cancelled, then finishes
/// in-flight work, commits, and leaves the group. Returns an error, without committing
/// past the failure, if the broker refuses an output.
pub async fn run<H: Handler>(
    cfg: PipelineConfig,
    handler: H,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = StageMetrics::new(cfg.service);
    let group = cfg.args.consumer_group.clone().unwrap_or_else(|| cfg.service.to_string());
    let commit_interval = cfg.args.commit_interval_ms.to_string();
    let defaults = [
        ("group.id", group.as_str()),
        // librdkafka commits what we *store*, and we store only acknowledged inputs.
        ("enable.auto.commit", "true"),
        ("enable.auto.offset.store", "false"),
        ("auto.commit.interval.ms", commit_interval.as_str()),
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
    ];
    let consumer: Arc<StreamConsumer<StageContext>> = Arc::new(
        client_config(&cfg.common, &defaults)
            .create_with_context(StageContext { metrics: metrics.clone() })?,
    );
    let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let producer = producer(&cfg.common)?;
    info!(service = cfg.service, group, topics = ?topics, "consuming");

    // Input order is kept from here to the offset store by a single FIFO.
    let (tx, mut rx) = mpsc::channel::<Pending>(cfg.args.max_in_flight.max(1));
    let failed = CancellationToken::new();
    let acker = {
        let consumer = consumer.clone();
        let metrics = metrics.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                for (topic, d) in p.deliveries {
                    match d.await {
                        Ok(Ok(_)) => metrics.produced(&topic),
                        Ok(Err((e, msg))) => {
                            failed.cancel();
                            return Err(anyhow::anyhow!(
                                "broker refused output to {} for input {}[{}]@{}: {e}",
                                msg.topic(), p.topic, p.partition, p.offset
                            ));
                        }
                        Err(_) => {
                            failed.cancel();
                            return Err(anyhow::anyhow!("producer dropped an output before acknowledging it"));
                        }
                    }
                }
                // The next offset to read. Not `store_offset`: librdkafka's legacy
                // rd_kafka_offset_store adds 1 itself, which committed last+2 and skipped a
                // message after every restart (and reset a fully read partition to earliest).
                let mut next = rdkafka::TopicPartitionList::new();
                let stored = next
                    .add_partition_offset(&p.topic, p.partition, rdkafka::Offset::Offset(p.offset + 1))
                    .and_then(|_| consumer.store_offsets(&next));
                if let Err(e) = stored {
                    // The partition was revoked meanwhile; its new owner redelivers.
                    debug!(topic = p.topic, partition = p.partition, "offset not stored: {e}");
                }
            }
            Ok::<(), anyhow::Error>(())
        })
    };

    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut last_report = Instant::now();
    let mut loop_result = Ok(());
    // An idle input is not a stalled loop: beat while waiting too.
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    crate::health::ready();
    'consume: loop {
        crate::health::beat();
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = failed.cancelled() => break,
            _ = beat.tick() => continue,
            m = consumer.recv() => m,
        };
        let mut batch = Vec::with_capacity(cfg.args.batch);
        match first {
            Ok(m) => batch.push(InMessage::from_kafka(&m)),
            Err(e) => {
                warn!("consume error: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        while batch.len() < cfg.args.batch {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(InMessage::from_kafka(&m)),
                Some(Err(e)) => warn!("consume error: {e}"),
                None => break,
            }
        }
        let started = Instant::now();
        // One span per input, from now until its outputs are handed to the producer.
        let spans: Vec<tracing::Span> = batch.iter().map(|m| crate::telemetry::input_span(cfg.service, m)).collect();
        let mut backoff = Duration::from_millis(100);
        let processed = loop {
            match handler.handle(&batch).await {
                Ok(p) => {
                    crate::health::trouble(None);
                    break p;
                }
                Err(e) => {
                    error!(error = %e, batch = batch.len(), "transient failure; retrying, nothing committed");
                    crate::health::trouble(Some(format!("retrying a transient failure: {e}")));
                    crate::health::beat();
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'consume,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        if processed.len() != batch.len() {
            loop_result = Err(anyhow::anyhow!(
                "handler returned {} results for {} inputs",
                processed.len(),
                batch.len()
            ));
            break;
        }
        for ((input, p), span) in batch.iter().zip(processed).zip(spans) {
            metrics.message(p.outcome);
            *counts.entry(p.outcome).or_default() += 1;
            span.record("outcome", p.outcome);
            let traceparent = crate::telemetry::traceparent(&span, &input.trace_id);
            let mut deliveries = Vec::with_capacity(p.outputs.len());
            for mut out in p.outputs {
                out.set_traceparent(traceparent.clone());
                deliveries.push((out.topic.clone(), send(&producer, &out).await?));
            }
            let pending = Pending {
                topic: input.topic.clone(),
                partition: input.partition,
                offset: input.offset,
                deliveries,
            };
            if tx.send(pending).await.is_err() {
                break 'consume; // the acker failed; its error is reported below
            }
        }
        metrics.batch_latency(started.elapsed().as_secs_f64() * 1000.0);
        if last_report.elapsed() > Duration::from_secs(10) {
            info!(service = cfg.service, ?counts, "progress");
            last_report = Instant::now();
        }
    }

    // Drain: wait for every output in flight, store their offsets, commit, leave.
    drop(tx);
    let acked = acker.await.map_err(|e| anyhow::anyhow!("acker task: {e}"))?;
    let _ = producer.flush(Duration::from_secs(30));
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => warn!("final commit failed: {e}"),
    }
    consumer.unsubscribe();
    drop(consumer);
    info!(service = cfg.service, ?counts, "stopped");
    acked.and(loop_result)
}

/// Queues one output, waiting while librdkafka's local queue is full rather than
/// dropping anything.
pub async fn send(
    producer: &FutureProducer,
    out: &OutRecord,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
    for (k, v) in &out.headers {
        headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    let mut record = FutureRecord::to(&out.topic)
        .key(out.key.as_bytes())
        .payload(&out.payload)
        .headers(headers);
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(anyhow::anyhow!("cannot queue output to {}: {e}", out.topic)),
        }
    }
}

/// A service's stop: cancelled on SIGTERM or SIGINT, and bounded. A service drains what it
/// holds, commits and leaves its group; but with the broker, Redis or PostgreSQL gone every
/// one of those steps can wait for minutes (deliveries time out after 5, a sync commit or
/// a group leave waits for a coordinator that is not there). So once the grace period
/// (`SHUTDOWN_GRACE`, default 30 s, as Kubernetes gives) is spent less a margin, the
/// process exits anyway, leaving uncommitted whatever it could not commit: its inputs are
/// redelivered to the next owner, whose claims and marks make redoing them safe.
pub fn service_shutdown() -> CancellationToken {
    let grace = std::env::var("SHUTDOWN_GRACE").ok().and_then(|g| humantime::parse_duration(&g).ok()).unwrap_or(Duration::from_secs(30));
    // Leave the orchestrator time to see the exit before it would SIGKILL.
    let deadline = grace.saturating_sub(Duration::from_secs(2).min(grace / 10));
    let token = shutdown_on_signals();
    let t = token.clone();
    tokio::spawn(async move {
        t.cancelled().await;
        // A thread, not a task: the runtime may be blocked in a synchronous client call.
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            tracing::warn!(grace = ?grace, "grace period spent before the drain finished (broker, Redis or database unreachable?): exiting now; uncommitted inputs will be redelivered");
            std::process::exit(0);
        });
    });
    token
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
            _ = int.recv() => info!("SIGINT: finishing in-flight work"),
        }
        crate::health::draining();
        t.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let t = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(parse_traceparent(t).unwrap(), "0af7651916cd43dd8448eb211c80319c");
        assert!(parse_traceparent(b"00-xyz-1-01").is_none());
        assert!(parse_traceparent(b"00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none());
        assert!(parse_traceparent(&[0xff, 0xfe]).is_none());
        assert_eq!(new_trace_id().len(), 32);
    }

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
            producer(&cli.common).unwrap_or_else(|e| panic!("{options}: {e}"));
        }
    }
}
