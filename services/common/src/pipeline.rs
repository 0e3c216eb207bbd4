//! The consume → process → produce → commit loop every stream stage runs (DESIGN §1).
//!
//! At-least-once, without transactions (the dev broker has none): an input is *finished*
//! only after every output it produced (its results, audit and DLQ records) is acknowledged
//! by the broker, and a partition is committed only up to its lowest unfinished input (the
//! offset tracker the writer uses too, `kafka::offsets`). Each output's delivery report
//! counts down its input's outstanding outputs on the producer's polling thread (`Acks`):
//! no future, channel or task wake-up per output. A crash therefore redelivers, never loses;
//! downstream stages make the redelivered duplicates harmless.
//!
//! The producer is idempotent with acks=all, so broker-side retries do not duplicate.

use crate::config::{CommonArgs, PipelineArgs};
use crate::kafka::offsets::{commit, Offsets, TrackingContext, MANUAL_COMMITS};
use crate::kafka::{self, InMessage, Kafka, OutRecord, Ticket};
use crate::telemetry::StageMetrics;
use futures::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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
    fn handle(&self, batch: &[InMessage]) -> impl Future<Output = Result<Vec<Processed>, Transient>> + Send;
}

pub struct PipelineConfig {
    /// The service name: default consumer group and the stage label in metrics and logs.
    pub service: &'static str,
    pub input_topics: Vec<String>,
    pub common: CommonArgs,
    pub args: PipelineArgs,
}

/// An input whose outputs are on their way to the broker: finished when the last of them is
/// acknowledged. Holds one of the loop's `max_in_flight` permits until then.
struct InFlight {
    outstanding: AtomicUsize,
    ticket: Ticket,
    _permit: OwnedSemaphorePermit,
}

/// The producer's context: every delivery report lands here, on librdkafka's polling thread.
/// An acknowledged output counts its input down, and the input's last one finishes it in the
/// offset tracker; a refused one is the loop's error (nothing past it is committed).
struct Acks {
    offsets: Arc<Mutex<Offsets>>,
    metrics: StageMetrics,
    failed: CancellationToken,
    error: Mutex<Option<anyhow::Error>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Arc<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, input: Arc<InFlight>) {
        match result {
            Ok(m) => {
                self.metrics.produced(m.topic());
                if input.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // A partition revoked meanwhile has a new generation or none: this
                    // changes nothing there, and its new owner redelivers.
                    self.offsets.lock().expect("offsets").finished(&input.ticket);
                }
            }
            Err((e, m)) => {
                let t = &input.ticket;
                let e = anyhow::anyhow!("broker refused output to {}: {e}", m.topic())
                    .context(format!("input {}[{}]@{}", t.topic, t.partition, t.offset));
                self.error.lock().expect("error").get_or_insert(e);
                self.failed.cancel();
            }
        }
    }
}

/// `f` over `items` on every core, the results in input order: for a stage's CPU-bound work
/// on a batch (decoding, encoding, building audit records, parsing phone numbers: the
/// crate's parser still looks its patterns up under one process-wide lock, but validation,
/// most of a parse, no longer does: `phone::valid`). Blocks the calling
/// task's thread meanwhile (tokio is told, so its other tasks move to another worker). Small
/// batches stay on this thread: under light load latency matters more than cores.
pub fn map_in_parallel<'a, T: Sync, R: Send>(items: &'a [T], f: impl Fn(&'a T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if items.len() < PARALLEL_FROM {
        return items.iter().map(f).collect();
    }
    let run = || items.par_iter().with_min_len(PARALLEL_FROM / 2).map(f).collect();
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
        _ => run(),
    }
}

/// The smallest batch `map_in_parallel` splits.
const PARALLEL_FROM: usize = 64;

/// Runs `handler` over the input topics until `shutdown` is cancelled, then finishes
/// in-flight work, commits, and leaves the group. Returns an error, without committing
/// past the failure, if the broker refuses an output.
pub async fn run<H: Handler>(cfg: PipelineConfig, handler: H, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = StageMetrics::new(cfg.service);
    let group = cfg.args.consumer_group.clone().unwrap_or_else(|| cfg.service.to_string());
    let settings = [MANUAL_COMMITS[0], MANUAL_COMMITS[1], ("statistics.interval.ms", "5000")];
    let offsets = Arc::new(Mutex::new(Offsets::default()));
    let kafka = Kafka::from_args(&cfg.common)?;
    let consumer = kafka.group_consumer(&group, &settings, TrackingContext { offsets: offsets.clone(), metrics: metrics.clone() })?;
    let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let failed = CancellationToken::new();
    let acks = Acks { offsets: offsets.clone(), metrics: metrics.clone(), failed: failed.clone(), error: Mutex::new(None) };
    let producer = Arc::new(kafka.producer_with_context(&[], acks)?);
    info!(service = cfg.service, group, topics = ?topics, "consuming");
    // The next batch is read and handled while this one's outputs are handed to the
    // producer: a batch's CPU work (or the deduper's Redis round trip) overlaps the
    // previous batch's sending. One batch waits between the two at most.
    let (handled_tx, handled_rx) = mpsc::channel::<Handled>(1);
    let sender = tokio::spawn(send_handled(
        handled_rx,
        producer.clone(),
        Arc::new(Semaphore::new(cfg.args.max_in_flight.max(1))),
        metrics.clone(),
        failed.clone(),
        cfg.service,
        cfg.common.topics.clone(),
    ));

    // Two batches may be in the handler at once, taken out in read order: while one waits
    // on I/O (the deduper's Redis round trip), the next is decoded. A batch's Redis commands
    // are sent before the next batch's, on one connection, so Redis runs them in read order.
    // Only when a batch fails and is retried can the next one's marks land first; then the
    // later input makes the mark and the earlier reads as its repeat (or as an older
    // version), so each activity still goes on once, at its newest version.
    let handler = Arc::new(handler);
    let mut handling = futures::stream::FuturesOrdered::new();
    let mut loop_result = Ok(());
    // An idle input is not a stalled loop: beat while waiting too.
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    let mut commits = tokio::time::interval(Duration::from_millis(cfg.args.commit_interval_ms.max(1)));
    crate::health::ready();
    let mut stopping = false;
    loop {
        crate::health::beat();
        let first = tokio::select! {
            biased;
            _ = failed.cancelled() => break,
            Some(handled) = handling.next(), if !handling.is_empty() => {
                let go_on = match handled {
                    // Err: the sender failed; its error is reported below.
                    Some(Ok(h)) => handled_tx.send(h).await.is_ok(),
                    Some(Err(e)) => {
                        loop_result = Err(e);
                        false
                    }
                    // Stopped while retrying: nothing of it is sent or committed.
                    None => true,
                };
                if !go_on {
                    break;
                }
                continue;
            }
            _ = shutdown.cancelled(), if !stopping => {
                // What is in the handler finishes and is sent; nothing more is read.
                stopping = true;
                continue;
            }
            _ = std::future::ready(()), if stopping && handling.is_empty() => break,
            _ = beat.tick() => continue,
            _ = commits.tick() => {
                commit(&consumer, &offsets);
                continue;
            }
            m = consumer.recv(), if !stopping && handling.len() < HANDLING => m,
        };
        // Each input's ticket is taken as it is read, before any later poll can run a
        // rebalance: a partition revoked meanwhile is then dropped from the tracker with it.
        let mut batch = Vec::with_capacity(cfg.args.batch);
        let mut tickets = Vec::with_capacity(cfg.args.batch);
        let ticket = |m: &InMessage| offsets.lock().expect("offsets").read(&m.topic, m.partition, m.offset);
        match first {
            Ok(m) => {
                let m = InMessage::from_kafka(&m);
                tickets.push(ticket(&m));
                batch.push(m);
            }
            Err(e) => {
                warn!("consume error: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        while batch.len() < cfg.args.batch {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    let m = InMessage::from_kafka(&m);
                    tickets.push(ticket(&m));
                    batch.push(m);
                }
                Some(Err(e)) => warn!("consume error: {e}"),
                None => break,
            }
        }
        handling.push_back(handle_batch(handler.clone(), batch, tickets, cfg.service, shutdown.clone()));
    }
    // Drain: the sender hands on what was handled, then every output's report comes in.
    drop(handled_tx);
    let sent = sender.await.map_err(|e| anyhow::anyhow!("sender task: {e}"))?;
    let flushed = producer.flush(Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("outputs not acknowledged within 30 s: {e}"));
    let acked = match producer.context().error.lock().expect("error").take() {
        Some(e) => Err(e),
        None => flushed,
    };
    commit(&consumer, &offsets);
    consumer.unsubscribe();
    drop(consumer);
    let counts = sent.as_ref().map(|c| c.clone()).unwrap_or_default();
    info!(service = cfg.service, ?counts, redis_round_trips = crate::redis_conn::round_trips(), "stopped");
    acked.and(sent.map(drop)).and(loop_result)
}

/// Batches in the handler at once (see `run`).
const HANDLING: usize = 2;

/// One batch through the handler, retrying a transient failure with backoff until it
/// succeeds; None if `shutdown` comes first. Err if the handler broke its contract.
async fn handle_batch<H: Handler>(
    handler: Arc<H>,
    batch: Vec<InMessage>,
    tickets: Vec<Ticket>,
    service: &'static str,
    shutdown: CancellationToken,
) -> Option<anyhow::Result<Handled>> {
    let started = Instant::now();
    // One span per input, from now until its outputs are handed to the producer (built on
    // every core: a span with its remote parent costs as much as a small handler).
    let spans: Vec<tracing::Span> = map_in_parallel(&batch, |m| crate::telemetry::input_span(service, m));
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
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    if processed.len() != batch.len() {
        return Some(Err(anyhow::anyhow!("handler returned {} results for {} inputs", processed.len(), batch.len())));
    }
    Some(Ok(Handled { batch, tickets, processed, spans, started }))
}

/// A batch the handler is done with, on its way to the producer.
struct Handled {
    batch: Vec<InMessage>,
    tickets: Vec<Ticket>,
    processed: Vec<Processed>,
    spans: Vec<tracing::Span>,
    started: Instant,
}

/// The sender: each handled batch's outputs handed to the producer in input order, each
/// input's outputs sharing one `InFlight` that their delivery reports count down (`Acks`);
/// at most `in_flight` inputs await their reports at once. Returns the outcome counts, or
/// the first output the producer would not queue (after cancelling `failed`, which stops
/// the loop).
async fn send_handled(
    mut handled: mpsc::Receiver<Handled>,
    producer: Arc<ThreadedProducer<Acks>>,
    in_flight: Arc<Semaphore>,
    metrics: StageMetrics,
    failed: CancellationToken,
    service: &'static str,
    topics: crate::config::Topics,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut last_report = Instant::now();
    while let Some(h) = handled.recv().await {
        for (((input, ticket), p), span) in h.batch.iter().zip(h.tickets).zip(h.processed).zip(h.spans) {
            metrics.message(p.outcome, topics.kind_of(&input.topic));
            *counts.entry(p.outcome).or_default() += 1;
            span.record("outcome", p.outcome);
            let traceparent = crate::telemetry::traceparent(&span, &input.trace_id);
            if p.outputs.is_empty() {
                producer.context().offsets.lock().expect("offsets").finished(&ticket);
                continue;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return Ok(counts) };
            let input = Arc::new(InFlight { outstanding: AtomicUsize::new(p.outputs.len()), ticket, _permit: permit });
            for out in &p.outputs {
                if let Err(e) = kafka::send_counted(&producer, out, &traceparent, input.clone()).await {
                    failed.cancel();
                    return Err(e);
                }
            }
        }
        metrics.batch_latency(h.started.elapsed().as_secs_f64() * 1000.0);
        if last_report.elapsed() > Duration::from_secs(10) {
            info!(service, ?counts, "progress");
            last_report = Instant::now();
        }
    }
    Ok(counts)
}
