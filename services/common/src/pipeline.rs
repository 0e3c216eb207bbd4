//! The consume → process → produce → commit loop every stream stage runs (DESIGN §1).
//!
//! At-least-once, without transactions (the dev broker has none): an input is *finished*
//! only after every output it produced (its results, audit and DLQ records) is acknowledged
//! by the broker, and a partition is committed only up to its lowest unfinished input (the
//! offset tracker the writer uses too, `kafka::offsets`). Inputs are acknowledged in the
//! order they were read. A crash therefore redelivers, never loses; downstream stages make
//! the redelivered duplicates harmless.
//!
//! The producer is idempotent with acks=all, so broker-side retries do not duplicate.

use crate::config::{CommonArgs, PipelineArgs};
use crate::kafka::offsets::{commit, Offsets, TrackingContext, MANUAL_COMMITS};
use crate::kafka::{self, InMessage, Kafka, OutRecord, Ticket};
use crate::telemetry::StageMetrics;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
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

/// An input whose outputs are on their way to the broker.
struct Pending {
    ticket: Ticket,
    deliveries: Vec<(String, rdkafka::producer::DeliveryFuture)>,
}

/// `f` over `items` on every core, the results in input order: for a stage's CPU-bound work
/// on a batch (decoding, encoding, building audit records, parsing phone numbers: the
/// crate's parser still looks its patterns up under one process-wide lock, but validation,
/// most of a parse, no longer does: `phone::valid`). Blocks the calling
/// task's thread meanwhile (tokio is told, so its other tasks move to another worker). Small
/// batches stay on this thread: under light load latency matters more than cores.
pub fn map_in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
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
    let kafka = Kafka::from_args(&cfg.common);
    let consumer = kafka.group_consumer(&group, &settings, TrackingContext { offsets: offsets.clone(), metrics: metrics.clone() })?;
    let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let producer = kafka.producer()?;
    info!(service = cfg.service, group, topics = ?topics, "consuming");

    // Input order is kept from here to the offset store by two FIFOs: handled batches to the
    // sender, and inputs whose outputs are on their way to the acker.
    let (tx, mut rx) = mpsc::channel::<Pending>(cfg.args.max_in_flight.max(1));
    let failed = CancellationToken::new();
    let acker = {
        let offsets = offsets.clone();
        let metrics = metrics.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                for (topic, d) in p.deliveries {
                    if let Err(e) = kafka::acknowledged(&topic, d).await {
                        failed.cancel();
                        let t = &p.ticket;
                        return Err(e.context(format!("input {}[{}]@{}", t.topic, t.partition, t.offset)));
                    }
                    metrics.produced(&topic);
                }
                // A partition revoked meanwhile has a new generation or none: this changes
                // nothing there, and its new owner redelivers.
                offsets.lock().expect("offsets").finished(&p.ticket);
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    // The next batch is read and handled while this one's outputs are handed to the
    // producer: a batch's CPU work (or the deduper's Redis round trip) overlaps the
    // previous batch's sending. One batch waits between the two at most.
    let (handled_tx, handled_rx) = mpsc::channel::<Handled>(1);
    let sender = tokio::spawn(send_handled(
        handled_rx,
        producer.clone(),
        tx,
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
    // Drain: the sender hands on what was handled, then the acker waits for every output.
    drop(handled_tx);
    let sent = sender.await.map_err(|e| anyhow::anyhow!("sender task: {e}"))?;
    let acked = acker.await.map_err(|e| anyhow::anyhow!("acker task: {e}"))?;
    let _ = producer.flush(Duration::from_secs(30));
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
/// input then passed to the acker. Returns the outcome counts, or the first output the
/// producer would not queue (after cancelling `failed`, which stops the loop).
async fn send_handled(
    mut handled: mpsc::Receiver<Handled>,
    producer: rdkafka::producer::FutureProducer,
    acker: mpsc::Sender<Pending>,
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
            let mut deliveries = Vec::with_capacity(p.outputs.len());
            for mut out in p.outputs {
                out.set_traceparent(traceparent.clone());
                match kafka::send(&producer, &out).await {
                    Ok(d) => deliveries.push((out.topic, d)),
                    Err(e) => {
                        failed.cancel();
                        return Err(e);
                    }
                }
            }
            if acker.send(Pending { ticket, deliveries }).await.is_err() {
                return Ok(counts); // the acker failed; its error is reported
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
