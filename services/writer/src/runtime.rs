//! The writer's Kafka side (DESIGN §5): messages from the assigned partitions go into one
//! lane per tenant, in read order; each lane runs on its own, so a tenant waiting for tokens
//! or backing off never holds back another tenant on the same partition. What is held in
//! memory is bounded: past `max_buffered` messages the partitions are paused, and resumed
//! below half. Each partition is committed only up to its lowest unfinished offset, and only
//! after everything a message produced (audit, DLQ) is acknowledged.

use crate::process::{Done, Shared, Work};
use crm_common::emit::Subject;
use crm_common::events::{ActivityWriteRequest, DlqReason, WritePayload, WriteRequest};
use crm_common::kafka::offsets::{commit, Offsets, TrackingContext, MANUAL_COMMITS};
use crm_common::kafka::{self, InMessage, Kafka, Ticket};
use crm_common::telemetry::StageMetrics;
use crm_connectors::connector::Connector;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub struct RuntimeConfig {
    pub service: &'static str,
    pub group: String,
    pub input_topic: String,
    pub max_buffered: usize,
    pub commit_interval: Duration,
    /// How long SIGTERM waits for lanes to finish what they hold.
    pub drain_timeout: Duration,
    /// How long a tenant's lane waits for work before it closes (a new one starts when the
    /// tenant sends again).
    pub lane_idle: Duration,
}

struct Lanes<C: Connector> {
    service: &'static str,
    shared: Arc<Shared<C>>,
    producer: FutureProducer,
    offsets: Arc<Mutex<Offsets>>,
    buffered: Arc<AtomicUsize>,
    metrics: StageMetrics,
    failed: CancellationToken,
    lanes: HashMap<String, Lane>,
    lane_idle: Duration,
}

/// A tenant's lane: its queue and the task working it. A lane idle for `lane_idle` closes
/// itself, so a writer serving thousands of tenants holds tasks only for the ones sending.
struct Lane {
    tx: mpsc::UnboundedSender<Work>,
    task: tokio::task::JoinHandle<()>,
}

/// Produces what finished messages produced and, once the broker has all of it, lets their
/// offsets be committed. A whole batch is sent before any acknowledgement is awaited: one
/// produce round trip per batch, not per message.
async fn publish(producer: &FutureProducer, offsets: &Mutex<Offsets>, metrics: &StageMetrics, done: Vec<Done>) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(done.len());
    for d in &done {
        let mut sent = Vec::with_capacity(d.outputs.len());
        for out in &d.outputs {
            sent.push((out.topic.clone(), kafka::send(producer, out).await?));
        }
        deliveries.push(sent);
    }
    for (d, sent) in done.into_iter().zip(deliveries) {
        for (topic, f) in sent {
            kafka::acknowledged(&topic, f).await?;
            metrics.produced(&topic);
        }
        metrics.message(d.outcome, d.activity);
        offsets.lock().expect("offsets").finished(&d.ticket);
    }
    Ok(())
}

impl<C: Connector> Lanes<C> {
    /// Queues `work` on its tenant's lane, starting one if the tenant has none or its lane
    /// closed itself for idleness. Err when the work cannot be queued (a lane failed).
    fn send(&mut self, tenant: &str, work: Work) -> Result<(), ()> {
        let work = match self.lanes.get(tenant) {
            Some(lane) => match lane.tx.send(work) {
                Ok(()) => return Ok(()),
                Err(closed) => closed.0,
            },
            None => work,
        };
        // A new lane starts after the tenant's previous one has finished what it held, so
        // the tenant's requests stay in order.
        let previous = self.lanes.remove(tenant).map(|l| l.task);
        let lane = self.start_lane(tenant, previous);
        let sent = lane.tx.send(work).map_err(|_| ());
        self.lanes.insert(tenant.to_string(), lane);
        sent
    }

    /// Forgets lanes that have closed and finished.
    fn sweep(&mut self) {
        self.lanes.retain(|_, lane| !(lane.tx.is_closed() && lane.task.is_finished()));
    }

    fn start_lane(&self, tenant: &str, previous: Option<tokio::task::JoinHandle<()>>) -> Lane {
        let tenant = tenant.to_string();
        let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
        let shared = self.shared.clone();
        let producer = self.producer.clone();
        let offsets = self.offsets.clone();
        let buffered = self.buffered.clone();
        let metrics = self.metrics.clone();
        let failed = self.failed.clone();
        let service = self.service;
        let max = shared.connector.batch_max().max(1);
        let idle = self.lane_idle;
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            loop {
                let first = match tokio::time::timeout(idle, rx.recv()).await {
                    Ok(Some(w)) => w,
                    // Every sender gone: the writer is stopping.
                    Ok(None) => break,
                    // Idle: refuse new work (the dispatcher starts a new lane, which waits
                    // for this one) and finish anything that arrived meanwhile.
                    Err(_) => {
                        tracing::debug!(tenant, "lane idle: closed");
                        rx.close();
                        continue;
                    }
                };
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                let n = batch.len();
                // A span per input, joined to its producer's trace; what it produces names it.
                // `process` answers one Done per Work, in order.
                let spans: Vec<(String, tracing::Span)> =
                    batch.iter().map(|w| (w.input.trace_id.clone(), crm_common::telemetry::input_span(service, &w.input))).collect();
                let mut done = shared.process(batch).await;
                for (d, (trace_id, span)) in done.iter_mut().zip(&spans) {
                    span.record("outcome", d.outcome);
                    let tp = crm_common::telemetry::traceparent(span, trace_id);
                    for out in &mut d.outputs {
                        out.set_traceparent(tp.clone());
                    }
                }
                drop(spans);
                if let Err(e) = publish(&producer, &offsets, &metrics, done).await {
                    error!(error = %e, "stopping: an output was refused, so its input stays uncommitted");
                    failed.cancel();
                    return;
                }
                buffered.fetch_sub(n, Ordering::SeqCst);
            }
        });
        Lane { tx, task }
    }
}

pub async fn run<C: Connector>(
    shared: Arc<Shared<C>>,
    common: &crm_common::config::CommonArgs,
    cfg: RuntimeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let offsets = Arc::new(Mutex::new(Offsets::default()));
    // Commits are ours: per partition, up to the lowest unfinished offset.
    let settings = [MANUAL_COMMITS[0], MANUAL_COMMITS[1], ("statistics.interval.ms", "5000")];
    let metrics = StageMetrics::new(cfg.service);
    let kafka = Kafka::from_args(common);
    let consumer = kafka.group_consumer(&cfg.group, &settings, TrackingContext { offsets: offsets.clone(), metrics: metrics.clone() })?;
    consumer.subscribe(&[cfg.input_topic.as_str()])?;
    let producer = kafka.producer()?;
    let failed = CancellationToken::new();
    let mut lanes = Lanes {
        service: cfg.service,
        shared: shared.clone(),
        producer: producer.clone(),
        offsets: offsets.clone(),
        buffered: Arc::new(AtomicUsize::new(0)),
        metrics: metrics.clone(),
        failed: failed.clone(),
        lanes: HashMap::new(),
        lane_idle: cfg.lane_idle,
    };
    info!(service = cfg.service, group = cfg.group, topic = cfg.input_topic, "consuming");
    let mut tick = tokio::time::interval(cfg.commit_interval);
    let mut paused = false;
    crm_common::health::ready();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = failed.cancelled() => break,
            _ = tick.tick() => {
                // Lanes waiting on tokens or retries are not this loop: it keeps ticking.
                crm_common::health::beat();
                commit(&consumer, &offsets);
                lanes.sweep();
                let held = lanes.buffered.load(Ordering::SeqCst);
                if held >= cfg.max_buffered {
                    // Also covers partitions assigned since the last pause.
                    if let Ok(a) = consumer.assignment() { let _ = consumer.pause(&a); }
                    paused = true;
                } else if paused && held < cfg.max_buffered / 2 {
                    if let Ok(a) = consumer.assignment() { let _ = consumer.resume(&a); }
                    paused = false;
                    info!(held, "resumed consuming");
                }
            }
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => InMessage::from_kafka(&m),
                    Err(e) => { warn!("consume error: {e}"); continue; }
                };
                let ticket = offsets.lock().expect("offsets").read(&m.topic, m.partition, m.offset);
                match request_of(&shared, &m) {
                    Ok(req) => {
                        let tenant = req.tenant_id().to_string();
                        lanes.buffered.fetch_add(1, Ordering::SeqCst);
                        if lanes.send(&tenant, Work { input: m, req, ticket }).is_err() {
                            error!("a lane stopped; stopping");
                            break;
                        }
                        if !paused && lanes.buffered.load(Ordering::SeqCst) >= cfg.max_buffered {
                            if let Ok(a) = consumer.assignment() { let _ = consumer.pause(&a); }
                            paused = true;
                            info!(held = cfg.max_buffered, "paused consuming: lanes are full");
                        }
                    }
                    Err(refused) => undecodable(&shared, &producer, &offsets, &metrics, m, ticket, refused).await?,
                }
            }
        }
    }

    // Drain: no new input; let the lanes finish what they hold (their claims make anything
    // cut short safe to redo), then commit what finished.
    let (senders, tasks): (Vec<_>, Vec<_>) = lanes.lanes.into_values().map(|l| (l.tx, l.task)).unzip();
    drop(senders);
    let drained = tokio::time::timeout(cfg.drain_timeout, futures::future::join_all(tasks)).await;
    if drained.is_err() {
        warn!("drain timed out; unfinished messages stay uncommitted and will be redelivered");
    }
    commit(&consumer, &offsets);
    let left = offsets.lock().expect("offsets").unfinished();
    if left > 0 {
        info!(left, "messages left unfinished and uncommitted; the next owner redoes them under their claims");
    }
    let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10));
    consumer.unsubscribe();
    info!(service = cfg.service, redis_round_trips = crm_common::redis_conn::round_trips(), "stopped");
    if failed.is_cancelled() {
        anyhow::bail!("stopped after the broker refused an output");
    }
    Ok(())
}

/// Why an input is not written: an activity this writer does not write, or is malformed
/// (VALIDATION, with its subject), or a payload that is no write request at all.
pub enum Refused {
    Activity { req: Box<ActivityWriteRequest>, why: String },
    Undecodable(String),
}

/// The write request in `m`: a call's CrmWriteRequest, or an email's or meeting's
/// ActivityWriteRequest of a kind this writer writes.
fn request_of<C: Connector>(shared: &Shared<C>, m: &InMessage) -> Result<WriteRequest, Refused> {
    let a = match crm_common::events::decode_write(m.payload.as_deref().unwrap_or_default()) {
        Ok(WritePayload::Call(req)) => return Ok(WriteRequest::Call(*req)),
        Ok(WritePayload::Activity(a)) => *a,
        Err(why) => return Err(Refused::Undecodable(format!("{} message is {why}", m.topic))),
    };
    if !shared.kinds.contains(&a.kind) {
        // An email or a meeting this writer does not write (a tenant's config changed under
        // a running deduper, or this CRM's contract for the kind is missing): say so
        // plainly, and keep it for replay once it does.
        let why = format!(
            "writer --crm {} does not write {}s (no contract contracts/{}.{}.toml, or not supported yet); the request is kept here for replay once it does",
            shared.crm.as_str(),
            a.kind.as_str(),
            shared.crm.as_str(),
            a.kind.as_str()
        );
        return Err(Refused::Activity { req: Box::new(a), why });
    }
    WriteRequest::try_from(a).map_err(|m| Refused::Activity { req: m.req, why: m.why })
}

async fn undecodable<C: Connector>(
    shared: &Shared<C>,
    producer: &FutureProducer,
    offsets: &Mutex<Offsets>,
    metrics: &StageMetrics,
    m: InMessage,
    ticket: Ticket,
    refused: Refused,
) -> anyhow::Result<()> {
    let activity = match &refused {
        Refused::Activity { req, .. } => Some(req.kind),
        Refused::Undecodable(_) => None,
    };
    let outputs = match refused {
        Refused::Activity { req: a, why } => {
            let subject = Subject {
                tenant_id: &a.tenant_id,
                call_id: Some(&a.source_id),
                crm: Some(shared.crm),
                version: Some(a.version),
                kind: Some(a.kind),
            };
            shared.emit.dead_letter(&m, &subject, "write", DlqReason::Validation, why.clone(), why).into()
        }
        Refused::Undecodable(detail) => {
            let anonymous = Subject { tenant_id: "", call_id: None, crm: Some(shared.crm), version: None, kind: None };
            shared.emit.dead_letter(&m, &anonymous, "write", DlqReason::SchemaInvalid, detail.clone(), detail).into()
        }
    };
    publish(producer, offsets, metrics, vec![Done { ticket, outputs, outcome: "dead_lettered", activity }]).await
}
