//! The writer's Kafka side (DESIGN §5): messages from the assigned partitions go into one
//! lane per tenant, in read order; each lane runs on its own, so a tenant waiting for tokens
//! or backing off never holds back another tenant on the same partition. What is held in
//! memory is bounded without ever pausing the partitions: a lane holds at most `lane_max`
//! messages (and, past `max_buffered` in all, only tenants holding nothing get more); a
//! tenant's messages past that are left in Kafka and read again when its lane has room
//! (`crate::backlog`), so one tenant's burst never makes another wait behind it. Each
//! partition is committed only up to its lowest unfinished or left offset, and only after
//! everything a message produced (audit, DLQ) is acknowledged.

use crate::backlog::{Backlog, Gone, Reread, Route};
use crate::process::{Done, Shared, Work};
use crm_common::emit::Subject;
use crm_common::events::{ActivityWriteRequest, DlqReason, WritePayload, WriteRequest};
use crm_common::kafka::offsets::{commit, Offsets, TrackingContext, MANUAL_COMMITS};
use crm_common::kafka::{self, InMessage, Kafka, Ticket};
use crm_common::telemetry::StageMetrics;
use crm_connectors::people::People;
use crm_connectors::places::Places;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub struct RuntimeConfig {
    pub service: &'static str,
    pub group: String,
    pub input_topic: String,
    pub max_buffered: usize,
    /// Most messages one tenant's lane holds; the tenant's next ones are left in Kafka.
    pub lane_max: usize,
    /// Most lane batches working at once (`crm_connectors::places`).
    pub working_lanes: usize,
    pub commit_interval: Duration,
    /// How long SIGTERM waits for lanes to finish what they hold.
    pub drain_timeout: Duration,
    /// How long a tenant's lane waits for work before it closes (a new one starts when the
    /// tenant sends again).
    pub lane_idle: Duration,
    /// How long a backlog pass waits for its next offset before the broker is asked why.
    pub pass_stall: Duration,
}

struct Lanes<C: People> {
    service: &'static str,
    shared: Arc<Shared<C>>,
    producer: FutureProducer,
    offsets: Arc<Mutex<Offsets>>,
    buffered: Arc<AtomicUsize>,
    metrics: StageMetrics,
    failed: CancellationToken,
    lanes: HashMap<String, Lane>,
    lane_idle: Duration,
    lane_max: usize,
    max_buffered: usize,
    places: Places,
    /// Told by a lane that finished a batch and is at most half full: a backlog pass may
    /// hand it more.
    room: Arc<Notify>,
}

/// A tenant's lane: its queue, how many messages it holds, and the task working it. A lane
/// idle for `lane_idle` closes itself, so a writer serving thousands of tenants holds tasks
/// only for the ones sending.
struct Lane {
    /// Boxed: the channel allocates its slots 32 at a time, so a lane holding one message
    /// would otherwise hold 32 requests' worth of memory, and thousands of tenants' lanes
    /// are open at once.
    tx: mpsc::UnboundedSender<Box<Work>>,
    held: Arc<AtomicUsize>,
    /// The tenant has messages left in Kafka (`crate::backlog`): a pass is handing them on,
    /// so a batch short of full lingers for them (`LINGER`).
    left: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a lane whose tenant has messages left in Kafka waits, at most, for a pass to
/// fill a short batch. A backlog pass hands a tenant its messages in parts as it reads them
/// (parts of 78, 22, 36 and 64 were logged), and a lane that took only what was queued sent
/// HubSpot and Zoho batch calls of 74–82 records where 100 fit: under a rate limit a batch
/// call costs the same token whatever it holds, so a few milliseconds spent filling it buy
/// records per second (`bench writer --crm hubspot`: 71.9 → 96.8 records per call, 292 → 396
/// records/s). A lane whose tenant has nothing left never waits: its messages come straight
/// from the consumer as they arrive, and a CRM that takes one record per call never batches.
const LINGER: Duration = Duration::from_millis(50);

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

impl<C: People> Lanes<C> {
    fn held(&self, tenant: &str) -> usize {
        self.lanes.get(tenant).filter(|l| !l.tx.is_closed()).map_or(0, |l| l.held.load(Ordering::SeqCst))
    }

    /// Whether `tenant`'s lane holds fewer than `bound` messages, and the writer has room
    /// unless the lane holds nothing (a tenant with nothing held is never made to wait for
    /// others' lanes to drain).
    fn under(&self, tenant: &str, bound: usize) -> bool {
        let held = self.held(tenant);
        held < bound && (held == 0 || self.buffered.load(Ordering::SeqCst) < self.max_buffered)
    }

    /// Whether `tenant`'s lane takes one more message now.
    fn room(&self, tenant: &str) -> bool {
        self.under(tenant, self.lane_max)
    }

    /// Whether a pass should read `tenant`'s left messages for it now: its lane is at most
    /// half full (a pass hands a good share, not one message at a time).
    fn ready(&self, tenant: &str) -> bool {
        self.under(tenant, self.lane_max / 2 + 1)
    }

    /// Queues `work` on its tenant's lane, starting one if the tenant has none or its lane
    /// closed itself for idleness. Err when the work cannot be queued (a lane failed).
    fn send(&mut self, tenant: &str, work: Work) -> Result<(), ()> {
        self.buffered.fetch_add(1, Ordering::SeqCst);
        let work = Box::new(work);
        let work = match self.lanes.get(tenant) {
            Some(lane) => {
                lane.held.fetch_add(1, Ordering::SeqCst);
                match lane.tx.send(work) {
                    Ok(()) => return Ok(()),
                    Err(closed) => {
                        lane.held.fetch_sub(1, Ordering::SeqCst);
                        closed.0
                    }
                }
            }
            None => work,
        };
        // A new lane starts after the tenant's previous one has finished what it held, so
        // the tenant's requests stay in order.
        let previous = self.lanes.remove(tenant).map(|l| l.task);
        let lane = self.start_lane(tenant, previous);
        lane.held.fetch_add(1, Ordering::SeqCst);
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
        let (tx, mut rx) = mpsc::unbounded_channel::<Box<Work>>();
        let shared = self.shared.clone();
        let producer = self.producer.clone();
        let offsets = self.offsets.clone();
        let buffered = self.buffered.clone();
        let metrics = self.metrics.clone();
        let failed = self.failed.clone();
        let service = self.service;
        let max = shared.connector.batch_max().max(1);
        let idle = self.lane_idle;
        let held = Arc::new(AtomicUsize::new(0));
        let lane_held = held.clone();
        let left = Arc::new(AtomicBool::new(false));
        let lane_left = left.clone();
        let (room, half) = (self.room.clone(), self.lane_max / 2);
        let places = self.places.clone();
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
                let mut batch = vec![*first];
                let linger_until = tokio::time::Instant::now() + LINGER;
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(w) => batch.push(*w),
                        Err(_) if lane_left.load(Ordering::SeqCst) => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                            Ok(Some(w)) => batch.push(*w),
                            _ => break,
                        },
                        Err(_) => break,
                    }
                }
                let n = batch.len();
                tracing::debug!(tenant, n, partition = batch[0].input.partition, offset = batch[0].input.offset, "lane batch");
                // A span per input, joined to its producer's trace; what it produces names it.
                // `process` answers one Done per Work, in order.
                let spans: Vec<(String, tracing::Span)> =
                    batch.iter().map(|w| (w.input.trace_id.clone(), crm_common::telemetry::input_span(service, &w.input))).collect();
                let mut done = places.work(|| shared.process(batch)).await;
                for (d, (trace_id, span)) in done.iter_mut().zip(&spans) {
                    span.record("outcome", d.outcome);
                    let tp = crm_common::telemetry::traceparent(span, trace_id);
                    for out in &mut d.outputs {
                        out.set_traceparent(tp.clone());
                    }
                }
                drop(spans);
                tracing::debug!(tenant, n, "lane batch done");
                if let Err(e) = publish(&producer, &offsets, &metrics, done).await {
                    error!(error = %e, "stopping: an output was refused, so its input stays uncommitted");
                    failed.cancel();
                    return;
                }
                buffered.fetch_sub(n, Ordering::SeqCst);
                if lane_held.fetch_sub(n, Ordering::SeqCst).saturating_sub(n) <= half {
                    room.notify_one();
                }
            }
        });
        Lane { tx, held, left, task }
    }

    /// Tells `tenant`'s lane whether the tenant has messages left in Kafka.
    fn mark_left(&self, tenant: &str, left: bool) {
        if let Some(lane) = self.lanes.get(tenant) {
            lane.left.store(left, Ordering::SeqCst);
        }
    }

    /// Clears the mark of every lane whose tenant no longer has messages left (a pass that
    /// ended on another tenant's message can have handed a tenant its last one).
    fn refresh_left(&self, backlog: &Backlog) {
        for (tenant, lane) in &self.lanes {
            if lane.left.load(Ordering::SeqCst) && !backlog.is_left(tenant) {
                lane.left.store(false, Ordering::SeqCst);
            }
        }
    }
}

pub async fn run<C: People>(
    shared: Arc<Shared<C>>,
    common: &crm_common::config::CommonArgs,
    cfg: RuntimeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let offsets = Arc::new(Mutex::new(Offsets::default()));
    // Commits are ours: per partition, up to the lowest unfinished offset.
    let settings = [MANUAL_COMMITS[0], MANUAL_COMMITS[1], ("statistics.interval.ms", "5000")];
    let metrics = StageMetrics::new(cfg.service);
    let kafka = Kafka::from_args(common)?;
    let consumer = kafka.group_consumer(&cfg.group, &settings, TrackingContext { offsets: offsets.clone(), metrics: metrics.clone() })?;
    consumer.subscribe(&[cfg.input_topic.as_str()])?;
    // Reads the group's own partitions again for the backlog's passes. A pass stops as soon
    // as its tenants' lanes are full, so it prefetches little.
    let rereader = Rereader {
        consumer: Arc::new(kafka.stream_reader(&format!("{}-backlog", cfg.group), &[("queued.max.messages.kbytes", "4096")])?),
        topic: cfg.input_topic.clone(),
        assigned: HashMap::new(),
        checking: HashMap::new(),
    };
    let (checked_tx, mut checked) = mpsc::unbounded_channel();
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
        lane_max: cfg.lane_max.max(1),
        max_buffered: cfg.max_buffered.max(1),
        places: Places::new(cfg.working_lanes),
        room: Arc::new(Notify::new()),
    };
    let mut backlog =
        Dispatch { backlog: Backlog::new(&cfg.input_topic), rereader, left: Arc::default(), reread: Arc::default(), gone: Arc::default() };
    crm_common::telemetry::writer_backlog_metrics(cfg.service, backlog.left.clone(), backlog.reread.clone(), backlog.gone.clone());
    let lane_has_room = lanes.room.clone();
    info!(service = cfg.service, group = cfg.group, topic = cfg.input_topic, lane_max = lanes.lane_max, "consuming");
    let mut tick = tokio::time::interval(cfg.commit_interval);
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
                lanes.refresh_left(&backlog.backlog);
                backlog.start_passes(&offsets, &lanes);
                backlog.check_stalled(cfg.pass_stall, &checked_tx);
            }
            Some(check) = checked.recv() => backlog.checked(&offsets, check),
            _ = lane_has_room.notified() => backlog.start_passes(&offsets, &lanes),
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => InMessage::from_kafka(&m),
                    Err(e) => { warn!("consume error: {e}"); continue; }
                };
                let req = request_of(&shared, &m);
                let tenant = req.as_ref().ok().map(|r| r.tenant_id().to_string());
                let room = tenant.as_deref().is_some_and(|t| lanes.room(t));
                let route = backlog.backlog.read(&mut offsets.lock().expect("offsets"), m.partition, m.offset, tenant.as_deref(), room);
                let Route::Lane(ticket) = route else {
                    if let Some(t) = tenant.as_deref() {
                        debug!(tenant = t, partition = m.partition, offset = m.offset, "lane full: left in Kafka");
                        lanes.mark_left(t, true);
                    }
                    backlog.count();
                    continue;
                };
                match req {
                    Ok(req) => {
                        let tenant = req.tenant_id().to_string();
                        if lanes.send(&tenant, Work { input: m, req, ticket }).is_err() {
                            error!("a lane stopped; stopping");
                            break;
                        }
                    }
                    Err(refused) => undecodable(&shared, &producer, &offsets, &metrics, m, ticket, refused).await?,
                }
            }
            m = backlog.rereader.consumer.recv() => {
                let m = match m {
                    Ok(m) => InMessage::from_kafka(&m),
                    Err(e) => { warn!("backlog read error: {e}"); continue; }
                };
                // A message that is not a write request was dead-lettered when first read;
                // the pass still counts its offset.
                let req = request_of(&shared, &m).ok();
                let tenant = req.as_ref().map(|r| r.tenant_id().to_string());
                let verdict = backlog.backlog.reread(&mut offsets.lock().expect("offsets"), m.partition, m.offset, tenant.as_deref(), |t| lanes.room(t));
                if let (Reread::Hand(ticket), Some(req), Some(tenant)) = (verdict, req, tenant.as_deref()) {
                    debug!(tenant, partition = m.partition, offset = m.offset, "handed on from Kafka");
                    backlog.reread.fetch_add(1, Ordering::Relaxed);
                    if lanes.send(tenant, Work { input: m, req, ticket }).is_err() {
                        error!("a lane stopped; stopping");
                        break;
                    }
                }
                // After the hand: it may have started the tenant's lane.
                if let Some(t) = tenant.as_deref() {
                    lanes.mark_left(t, backlog.backlog.is_left(t));
                }
                backlog.follow();
            }
        }
    }

    // Drain: no new input; let the lanes finish what they hold (their claims make anything
    // cut short safe to redo), then commit what finished. What is left in Kafka stays
    // uncommitted for the next owner.
    let (senders, tasks): (Vec<_>, Vec<_>) = lanes.lanes.into_values().map(|l| (l.tx, l.task)).unzip();
    drop(senders);
    let drained = tokio::time::timeout(cfg.drain_timeout, futures::future::join_all(tasks)).await;
    if drained.is_err() {
        warn!("drain timed out; unfinished messages stay uncommitted and will be redelivered");
    }
    commit(&consumer, &offsets);
    // Answers whose tokens wait for the flusher: settled now, not left to their lease.
    shared.api.buckets.flush().await;
    let (left, held) = {
        let o = offsets.lock().expect("offsets");
        (o.unfinished(), o.held())
    };
    if left > 0 || held > 0 {
        info!(
            left,
            partitions_with_tenants_left_in_kafka = held,
            "messages left unfinished and uncommitted; the next owner redoes them under their claims"
        );
    }
    let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10));
    consumer.unsubscribe();
    info!(
        service = cfg.service,
        redis_round_trips = crm_common::redis_conn::round_trips(),
        backlog_reread = backlog.reread.load(Ordering::Relaxed),
        "stopped"
    );
    if failed.is_cancelled() {
        anyhow::bail!("stopped after the broker refused an output");
    }
    Ok(())
}

/// The second consumer, outside the group, that reads partitions again for the backlog's
/// passes: assigned a partition, at the pass's offset, while the pass runs.
struct Rereader {
    /// Shared with the stalled passes' checks, which ask the broker on a blocking thread.
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// partition → the pass it is assigned for.
    assigned: HashMap<i32, u64>,
    /// (partition, pass) → when the broker was last asked about it (a check in flight, or
    /// one that failed, is not repeated within the stall time).
    checking: HashMap<(i32, u64), Instant>,
}

/// The broker's answer about a stalled pass: where `partition`'s log starts and ends.
struct Check {
    partition: i32,
    pass: u64,
    next: i64,
    watermarks: KafkaResult<(i64, i64)>,
}

/// The backlog, the reader of its passes, and its figures.
struct Dispatch {
    backlog: Backlog,
    rereader: Rereader,
    left: Arc<AtomicU64>,
    reread: Arc<AtomicU64>,
    /// Offsets of left messages deleted from the topic before a pass read them again.
    gone: Arc<AtomicU64>,
}

impl Dispatch {
    fn start_passes<C: People>(&mut self, offsets: &Mutex<Offsets>, lanes: &Lanes<C>) {
        self.backlog.start_passes(&offsets.lock().expect("offsets"), |t| lanes.ready(t));
        self.follow();
    }

    /// Asks the broker, on a blocking thread, about every pass that has waited `after` for
    /// its next offset; the answer comes back to the loop as a [`Check`].
    fn check_stalled(&mut self, after: Duration, answers: &mpsc::UnboundedSender<Check>) {
        let stalled = self.backlog.stalled(after);
        let r = &mut self.rereader;
        r.checking.retain(|(p, id), _| stalled.iter().any(|(sp, sid, _)| sp == p && sid == id));
        for (partition, pass, next) in stalled {
            if r.checking.get(&(partition, pass)).is_some_and(|at| at.elapsed() < after) {
                continue;
            }
            r.checking.insert((partition, pass), Instant::now());
            let (consumer, topic, answers) = (r.consumer.clone(), r.topic.clone(), answers.clone());
            tokio::task::spawn_blocking(move || {
                let watermarks = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10));
                let _ = answers.send(Check { partition, pass, next, watermarks });
            });
        }
    }

    /// Acts on the broker's answer about a stalled pass: left messages deleted below the
    /// log's start are reported and stepped over; an offset still there is read again.
    fn checked(&mut self, offsets: &Mutex<Offsets>, check: Check) {
        let Check { partition, pass, next, watermarks } = check;
        match watermarks {
            Ok((low, _)) if low > next => {
                let gone = self.backlog.gone(&mut offsets.lock().expect("offsets"), partition, pass, low);
                if let Some(gone) = gone {
                    self.report(&gone);
                }
            }
            Ok((low, high)) => {
                if self.backlog.restart(partition, pass, next) {
                    warn!(
                        partition,
                        offset = next,
                        low,
                        high,
                        "a backlog pass got nothing at its offset, which Kafka still has: reading it again"
                    );
                }
            }
            Err(e) => warn!(partition, offset = next, "a backlog pass is stuck and the broker could not be asked why: {e}"),
        }
        self.follow();
    }

    /// Left messages that retention deleted: each tenant that had some is named with where
    /// they started, at error level, and the gauge counts the offsets stepped over. Kafka
    /// no longer has them, so no stage can dead-letter them: the upstream event (or a
    /// backfill from calls.raw, if it is kept longer) is the way to write them now.
    fn report(&self, gone: &Gone) {
        self.gone.fetch_add((gone.to - gone.from) as u64, Ordering::Relaxed);
        for (tenant, from) in &gone.tenants {
            error!(
                tenant,
                partition = gone.partition,
                from,
                log_start = gone.to,
                "messages left in Kafka for this tenant were deleted (retention) before its lane had room: offsets {from}..{} of the partition are gone and were not written; backfill them from the raw topic",
                gone.to
            );
        }
    }

    /// Publishes how many (tenant, partition) pairs are left, saying when the first is left
    /// and when the last is handed on.
    fn count(&self) {
        let now = self.backlog.left() as u64;
        let before = self.left.swap(now, Ordering::Relaxed);
        if before == 0 && now > 0 {
            info!("a tenant's lane is full: its next messages are left in Kafka and read again when it has room");
        } else if before > 0 && now == 0 {
            info!("backlog empty: every message left in Kafka was read again and handed on");
        }
    }

    /// Assigns the reader to every running pass's partition at its offset, and takes it off
    /// partitions whose pass ended.
    fn follow(&mut self) {
        self.count();
        let passes = self.backlog.passes();
        let r = &mut self.rereader;
        let ended: Vec<i32> =
            r.assigned.iter().filter(|(p, id)| !passes.iter().any(|(pp, pid, _)| pp == *p && pid == *id)).map(|(p, _)| *p).collect();
        if !ended.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in &ended {
                tpl.add_partition(&r.topic, *p);
                r.assigned.remove(p);
            }
            if let Err(e) = r.consumer.incremental_unassign(&tpl) {
                warn!("backlog reader: unassign failed: {e}");
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (p, id, from) in passes {
            if r.assigned.contains_key(&p) {
                continue;
            }
            if tpl.add_partition_offset(&r.topic, p, Offset::Offset(from)).is_ok() {
                r.assigned.insert(p, id);
                debug!(partition = p, from, "backlog pass: reading again");
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = r.consumer.incremental_assign(&tpl) {
                warn!("backlog reader: assign failed: {e}");
            }
        }
    }
}

/// Why an input is not written: an activity this writer does not write, or is malformed
/// (VALIDATION, with its subject), or a payload that is no write request at all.
pub enum Refused {
    Activity { req: Box<ActivityWriteRequest>, why: String },
    Undecodable(String),
}

/// The write request in `m`: a call's CrmWriteRequest, or an email's or meeting's
/// ActivityWriteRequest of a kind this writer writes.
fn request_of<C: People>(shared: &Shared<C>, m: &InMessage) -> Result<WriteRequest, Refused> {
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

async fn undecodable<C: People>(
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
