//! Structured logs (tracing) and OpenTelemetry metrics and traces over OTLP/HTTP.
//! Without OTEL_EXPORTER_OTLP_ENDPOINT nothing is exported but logs still are; metrics are
//! recorded against the no-op global provider, so code never checks whether export is on.

use crate::config::{CommonArgs, LogFormat};
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Flushes and stops exporters when dropped (at the end of main).
pub struct Telemetry {
    meters: Option<SdkMeterProvider>,
    tracer: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(m) = self.meters.take() {
            let _ = m.shutdown();
        }
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown();
        }
    }
}

/// Whether text logs are coloured: only on a terminal, and never with `NO_COLOR` set
/// (no-color.org). A log a file, a pipe or a collector receives is plain text.
pub fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn init(service: &'static str, args: &CommonArgs) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    let (meters, tracer) = match &args.otel_exporter_otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            let endpoint = endpoint.trim_end_matches('/').to_string();
            let protocol = if args.otel_exporter_otlp_protocol == "http/json" {
                opentelemetry_otlp::Protocol::HttpJson
            } else {
                opentelemetry_otlp::Protocol::HttpBinary
            };
            // The OTLP HTTP client is blocking and must not be built on a runtime thread.
            let (m, t) = std::thread::spawn(move || build_exporters(service, &endpoint, protocol))
                .join()
                .map_err(|_| anyhow::anyhow!("building OTLP exporters panicked"))??;
            (Some(m), Some(t))
        }
        _ => (None, None),
    };
    let otel_layer = tracer.as_ref().map(|t| tracing_opentelemetry::layer().with_tracer(t.tracer(service)));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let res = match args.log_format {
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_ansi(colour_logs()).with_writer(std::io::stderr)).try_init(),
    };
    // A second init (tests, dev mode) keeps the first subscriber.
    let _ = res;
    if let Some(m) = &meters {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    if let Some(addr) = args.health_addr {
        crate::health::serve(service, addr, args.health_stall)?;
    }
    Ok(Telemetry { meters, tracer })
}

fn build_exporters(
    service: &'static str,
    endpoint: &str,
    protocol: opentelemetry_otlp::Protocol,
) -> anyhow::Result<(SdkMeterProvider, SdkTracerProvider)> {
    let resource = Resource::builder().with_service_name(service).build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{endpoint}/v1/metrics"))
        .build()?;
    let meters = SdkMeterProvider::builder().with_periodic_exporter(metric_exporter).with_resource(resource.clone()).build();
    let span_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build()?;
    let tracer = SdkTracerProvider::builder().with_batch_exporter(span_exporter).with_resource(resource).build();
    Ok((meters, tracer))
}

/// The instruments every stage reports (DESIGN §9): messages by outcome, processing
/// latency, consumer lag.
#[derive(Clone)]
pub struct StageMetrics {
    stage: &'static str,
    messages: Counter<u64>,
    latency: Histogram<f64>,
    produced: Counter<u64>,
    /// (topic, partition) → lag, refreshed from librdkafka statistics.
    pub lag: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl StageMetrics {
    pub fn new(stage: &'static str) -> StageMetrics {
        let meter: Meter = opentelemetry::global::meter("crm-sync");
        let lag: Arc<Mutex<HashMap<(String, i32), i64>>> = Arc::default();
        let lag_read = lag.clone();
        meter
            .i64_observable_gauge("crm_sync.consumer.lag")
            .with_description("Messages behind the partition's high watermark")
            .with_callback(move |obs| {
                for ((topic, partition), lag) in lag_read.lock().expect("lock").iter() {
                    obs.observe(
                        *lag,
                        &[
                            KeyValue::new("stage", stage),
                            KeyValue::new("topic", topic.clone()),
                            KeyValue::new("partition", *partition as i64),
                        ],
                    );
                }
            })
            .build();
        StageMetrics {
            stage,
            messages: meter.u64_counter("crm_sync.messages").with_description("Input messages handled, by outcome").build(),
            latency: meter
                .f64_histogram("crm_sync.processing.duration")
                .with_unit("ms")
                .with_description("Time from taking a batch to its outputs being handed to the producer")
                .build(),
            produced: meter
                .u64_counter("crm_sync.produced")
                .with_description("Output messages acknowledged by the broker, by topic")
                .build(),
            lag,
        }
    }

    /// Lag per assigned partition from librdkafka's statistics; partitions no longer
    /// reported (revoked) are forgotten, so a moved partition is not counted twice.
    pub fn record_lag(&self, stats: rdkafka::Statistics) {
        let mut lag = self.lag.lock().expect("lock");
        lag.clear();
        for (topic, t) in stats.topics {
            for (pid, p) in t.partitions {
                if pid >= 0 && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), pid), p.consumer_lag);
                }
            }
        }
    }

    /// One input handled: its outcome, and the kind of activity it was (`call`, `email`,
    /// `meeting`; `unknown` where the input could not say).
    pub fn message(&self, outcome: &'static str, activity: Option<crate::events::ActivityKind>) {
        let activity = activity.map_or("unknown", crate::events::ActivityKind::as_str);
        self.messages.add(1, &[KeyValue::new("stage", self.stage), KeyValue::new("outcome", outcome), KeyValue::new("activity", activity)]);
    }

    pub fn batch_latency(&self, ms: f64) {
        self.latency.record(ms, &[KeyValue::new("stage", self.stage)]);
    }

    pub fn produced(&self, topic: &str) {
        self.produced.add(1, &[KeyValue::new("stage", self.stage), KeyValue::new("topic", topic.to_string())]);
    }
}

/// Instruments of the CRM-facing side (DESIGN §9), shared by the writers and the reconciler:
/// request latency by status, retries by kind, token waits, what the CRMs say is left, and
/// dead letters by reason (counted where every stage builds them, in `emit`). Created on
/// first use, after `init` has installed the exporting provider.
pub struct CrmMetrics {
    latency: Histogram<f64>,
    retries: Counter<u64>,
    token_wait: Histogram<f64>,
    remaining: Arc<Mutex<LowestRemaining>>,
    _remaining_gauge: opentelemetry::metrics::ObservableGauge<i64>,
    dlq: Counter<u64>,
    people: Counter<u64>,
}

/// What a lead did to its person in the CRM (`crm_sync.lead.people`'s `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonResult {
    /// A new person (no one had the lead's email or phone).
    Created,
    /// An existing person updated (or found to need nothing).
    Updated,
    /// Several people matched and the tenant reviews such leads (`AMBIGUOUS_MATCH`).
    Ambiguous,
}

impl PersonResult {
    pub fn as_str(self) -> &'static str {
        match self {
            PersonResult::Created => "created",
            PersonResult::Updated => "updated",
            PersonResult::Ambiguous => "ambiguous",
        }
    }
}

/// Tenants reported per CRM and limit by `crm_sync.bucket.remaining`.
pub const REMAINING_TENANTS: usize = 20;
/// A tenant not heard of for this long leaves `crm_sync.bucket.remaining`.
pub const REMAINING_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What the CRMs' headers say is left of each limit, kept only for the `per_limit` tenants
/// closest to it per CRM and limit, and only while they are heard of. A tenant label on
/// every tenant would grow the metric (and the exporter's memory) with every tenant ever
/// written for; the tenants an operator looks for are the ones about to run out.
pub struct LowestRemaining {
    per_limit: usize,
    ttl: std::time::Duration,
    /// (crm, limit) → tenant → (left, when heard).
    by_limit: HashMap<(String, String), HashMap<String, (u64, std::time::Instant)>>,
}

impl LowestRemaining {
    pub fn new(per_limit: usize, ttl: std::time::Duration) -> LowestRemaining {
        LowestRemaining { per_limit: per_limit.max(1), ttl, by_limit: HashMap::new() }
    }

    pub fn record(&mut self, crm: &str, tenant: &str, limit: &str, left: u64, now: std::time::Instant) {
        let ttl = self.ttl;
        let tenants = self.by_limit.entry((crm.to_string(), limit.to_string())).or_default();
        tenants.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        tenants.insert(tenant.to_string(), (left, now));
        while tenants.len() > self.per_limit {
            let most = tenants.iter().max_by_key(|(t, (left, _))| (*left, *t)).map(|(t, _)| t.clone()).expect("not empty");
            tenants.remove(&most);
        }
    }

    /// (crm, tenant, limit, left) of every tenant kept and still fresh.
    pub fn current(&mut self, now: std::time::Instant) -> Vec<(String, String, String, u64)> {
        let ttl = self.ttl;
        self.by_limit.retain(|_, tenants| {
            tenants.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            !tenants.is_empty()
        });
        let mut out: Vec<_> = self
            .by_limit
            .iter()
            .flat_map(|((crm, limit), tenants)| tenants.iter().map(move |(t, (left, _))| (crm.clone(), t.clone(), limit.clone(), *left)))
            .collect();
        out.sort();
        out
    }
}

/// `crm_sync.redis.round_trips`: requests this process sent to Redis (see
/// `redis_conn::round_trips`), registered once, when the first connection is made.
pub fn redis_metrics() {
    static M: std::sync::OnceLock<opentelemetry::metrics::ObservableCounter<u64>> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        opentelemetry::global::meter("crm-sync")
            .u64_observable_counter("crm_sync.redis.round_trips")
            .with_description("Requests sent to Redis, each one round trip (a pipeline is one)")
            .with_callback(|obs| obs.observe(crate::redis_conn::round_trips(), &[]))
            .build()
    });
}

/// The tenants file as this process follows it (`live_tenants`):
/// `crm_sync.tenants.refused`, 1 while the file on disk is refused (the running config is
/// older than it), `crm_sync.tenants.reloads` by outcome (`applied`, `refused`) and
/// `crm_sync.tenants.waits` by outcome (`found`, `timed_out`), each a wait of a stage for
/// the file to name a tenant an earlier stage accepted.
struct TenantsMetrics {
    reloads: Counter<u64>,
    waits: Counter<u64>,
}

static TENANTS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn tenants_instruments() -> &'static TenantsMetrics {
    static M: std::sync::OnceLock<(TenantsMetrics, opentelemetry::metrics::ObservableGauge<u64>)> = std::sync::OnceLock::new();
    let (m, _) = M.get_or_init(|| {
        let meter = opentelemetry::global::meter("crm-sync");
        let refused = meter
            .u64_observable_gauge("crm_sync.tenants.refused")
            .with_description("1 while the tenants file on disk is refused and an older one runs")
            .with_callback(|obs| obs.observe(TENANTS_REFUSED.load(std::sync::atomic::Ordering::Relaxed), &[]))
            .build();
        let m = TenantsMetrics {
            reloads: meter.u64_counter("crm_sync.tenants.reloads").with_description("Changes of the tenants file, by outcome").build(),
            waits: meter
                .u64_counter("crm_sync.tenants.waits")
                .with_description("Waits for the tenants file to name a tenant an earlier stage accepted, by outcome")
                .build(),
        };
        (m, refused)
    });
    m
}

/// Registers the tenants file's instruments (at its first load).
pub fn tenants_metrics() {
    tenants_instruments();
}

pub fn tenants_reloaded(outcome: &'static str, refused: bool) {
    TENANTS_REFUSED.store(refused as u64, std::sync::atomic::Ordering::Relaxed);
    tenants_instruments().reloads.add(1, &[KeyValue::new("outcome", outcome)]);
}

pub fn tenants_waited(outcome: &'static str) {
    tenants_instruments().waits.add(1, &[KeyValue::new("outcome", outcome)]);
}

/// The writer's backlog (`writer::backlog`): `crm_sync.writer.backlog.left`, the (tenant,
/// partition) pairs whose messages are left in Kafka while their lanes are full, and
/// `crm_sync.writer.backlog.reread`, messages handed on by passes that read them again.
pub fn writer_backlog_metrics(
    stage: &'static str,
    left: Arc<std::sync::atomic::AtomicU64>,
    reread: Arc<std::sync::atomic::AtomicU64>,
    gone: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let meter = opentelemetry::global::meter("crm-sync");
    meter
        .u64_observable_gauge("crm_sync.writer.backlog.left")
        .with_description("Tenants (per partition) whose messages are left in Kafka until their lane has room")
        .with_callback(move |obs| obs.observe(left.load(Ordering::Relaxed), &[KeyValue::new("stage", stage)]))
        .build();
    meter
        .u64_observable_counter("crm_sync.writer.backlog.reread")
        .with_description("Messages read again from Kafka and handed to their tenant's lane")
        .with_callback(move |obs| obs.observe(reread.load(Ordering::Relaxed), &[KeyValue::new("stage", stage)]))
        .build();
    meter
        .u64_observable_counter("crm_sync.writer.backlog.gone")
        .with_description("Offsets a backlog pass stepped over because retention deleted them before it read them again (the left messages among them were not written)")
        .with_callback(move |obs| obs.observe(gone.load(Ordering::Relaxed), &[KeyValue::new("stage", stage)]))
        .build();
}

/// The DLQ's review queue, as the audit store holds it (`AuditStore::open_review`, refreshed
/// by the audit-sink): `crm_sync.dlq.open`, entries neither replayed nor acknowledged, and
/// `crm_sync.dlq.open.oldest_age` (s), how long the oldest of them has waited, by CRM and
/// reason. A CRM and reason once seen stays at 0 when its last entry is reviewed, so a
/// dashboard shows the queue emptied rather than a series gone.
pub fn dlq_review_metrics(current: Arc<Mutex<Vec<crate::audit_store::OpenReview>>>) {
    let meter = opentelemetry::global::meter("crm-sync");
    let ages = current.clone();
    let labels = |r: &crate::audit_store::OpenReview| [KeyValue::new("crm", r.crm.clone()), KeyValue::new("reason", r.reason.clone())];
    meter
        .i64_observable_gauge("crm_sync.dlq.open")
        .with_description("Dead letters waiting for review (neither replayed nor acknowledged), by CRM and reason")
        .with_callback(move |obs| {
            for r in current.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                obs.observe(r.open, &labels(r));
            }
        })
        .build();
    meter
        .f64_observable_gauge("crm_sync.dlq.open.oldest_age")
        .with_unit("s")
        .with_description("How long the oldest dead letter waiting for review has waited, by CRM and reason (0 when none waits)")
        .with_callback(move |obs| {
            for r in ages.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                obs.observe(r.oldest_age_s, &labels(r));
            }
        })
        .build();
}

/// `fresh` as the gauges should show it: every CRM and reason in `previous` that has no open
/// entry any more is kept at 0.
pub fn with_reviewed_at_zero(
    previous: &[crate::audit_store::OpenReview],
    mut fresh: Vec<crate::audit_store::OpenReview>,
) -> Vec<crate::audit_store::OpenReview> {
    for p in previous {
        if !fresh.iter().any(|f| f.crm == p.crm && f.reason == p.reason) {
            fresh.push(crate::audit_store::OpenReview { crm: p.crm.clone(), reason: p.reason.clone(), open: 0, oldest_age_s: 0.0 });
        }
    }
    fresh.sort_by(|a, b| (&a.crm, &a.reason).cmp(&(&b.crm, &b.reason)));
    fresh
}

pub fn crm_metrics() -> &'static CrmMetrics {
    static M: std::sync::OnceLock<CrmMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let meter = opentelemetry::global::meter("crm-sync");
        let remaining = Arc::new(Mutex::new(LowestRemaining::new(REMAINING_TENANTS, REMAINING_TTL)));
        let remaining_read = remaining.clone();
        CrmMetrics {
            latency: meter
                .f64_histogram("crm_sync.crm.request.duration")
                .with_unit("ms")
                .with_description("CRM API request latency, by CRM, request class, status (or timeout / error) and priority")
                .build(),
            people: meter
                .u64_counter("crm_sync.lead.people")
                .with_description("Leads written to a person, by CRM and result: created, updated, ambiguous (held for review)")
                .build(),
            retries: meter
                .u64_counter("crm_sync.crm.retries")
                .with_description("CRM requests sent again, by CRM and why (throttled, transient, auth_refresh)")
                .build(),
            token_wait: meter
                .f64_histogram("crm_sync.token.wait")
                .with_unit("ms")
                .with_description("Time spent waiting for rate-limit tokens before a CRM request, by CRM and priority")
                .build(),
            _remaining_gauge: meter
                .i64_observable_gauge("crm_sync.bucket.remaining")
                .with_description(format!(
                    "What the CRM's own headers say is left of a limit, by CRM, tenant and limit: the {REMAINING_TENANTS} tenants \
                     closest to each limit heard of in the last {} min",
                    REMAINING_TTL.as_secs() / 60
                ))
                .with_callback(move |obs| {
                    for (crm, tenant, limit, left) in remaining_read.lock().expect("lock").current(std::time::Instant::now()) {
                        obs.observe(
                            left.min(i64::MAX as u64) as i64,
                            &[KeyValue::new("crm", crm), KeyValue::new("tenant", tenant), KeyValue::new("limit", limit)],
                        );
                    }
                })
                .build(),
            remaining,
            dlq: meter.u64_counter("crm_sync.dlq").with_description("Dead letters, by stage, reason and CRM").build(),
        }
    })
}

impl CrmMetrics {
    /// `status`: the HTTP status, or "timeout" / "error" when there was no answer.
    pub fn request(&self, crm: &str, class: &'static str, status: String, priority: &'static str, ms: f64) {
        self.latency.record(
            ms,
            &[
                KeyValue::new("crm", crm.to_string()),
                KeyValue::new("class", class),
                KeyValue::new("status", status),
                KeyValue::new("priority", priority),
            ],
        );
    }

    /// A lead settled against a person in `crm`.
    pub fn person(&self, crm: &str, result: PersonResult) {
        self.people.add(1, &[KeyValue::new("crm", crm.to_string()), KeyValue::new("result", result.as_str())]);
    }

    pub fn retry(&self, crm: &str, kind: &'static str) {
        self.retries.add(1, &[KeyValue::new("crm", crm.to_string()), KeyValue::new("kind", kind)]);
    }

    pub fn token_wait(&self, crm: &str, priority: &'static str, ms: f64) {
        self.token_wait.record(ms, &[KeyValue::new("crm", crm.to_string()), KeyValue::new("priority", priority)]);
    }

    pub fn remaining(&self, crm: &str, tenant: &str, limit: &str, left: u64) {
        self.remaining.lock().expect("lock").record(crm, tenant, limit, left, std::time::Instant::now());
    }

    pub fn dead_letter(&self, stage: &str, reason: &str, crm: Option<&str>, activity: Option<crate::events::ActivityKind>) {
        self.dlq.add(
            1,
            &[
                KeyValue::new("stage", stage.to_string()),
                KeyValue::new("reason", reason.to_string()),
                KeyValue::new("crm", crm.unwrap_or("none").to_string()),
                KeyValue::new("activity", activity.map_or("unknown", crate::events::ActivityKind::as_str)),
            ],
        );
    }
}

/// A span for handling one input in `stage`, joined to its producer's trace: its parent is
/// the span the input's `traceparent` names (trace id and span id), so one call's spans
/// line up across services. An input without one gets a parent made up under its trace id,
/// which is the id the stage's audit records carry.
pub fn input_span(stage: &'static str, m: &crate::kafka::InMessage) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("{stage} process"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = %m.topic,
        messaging.kafka.partition = m.partition,
        messaging.kafka.offset = m.offset,
        outcome = tracing::field::Empty,
    );
    let parent_span = m
        .header(crate::kafka::TRACEPARENT)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split('-').nth(2))
        .and_then(|s| opentelemetry::trace::SpanId::from_hex(s).ok())
        .filter(|s| *s != opentelemetry::trace::SpanId::INVALID)
        .unwrap_or_else(|| opentelemetry::trace::SpanId::from_bytes((rand::random::<u64>() | 1).to_be_bytes()));
    if let Ok(trace) = opentelemetry::trace::TraceId::from_hex(&m.trace_id) {
        use opentelemetry::trace::TraceContextExt;
        let remote =
            opentelemetry::trace::SpanContext::new(trace, parent_span, opentelemetry::trace::TraceFlags::SAMPLED, true, Default::default());
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    span
}

/// The `traceparent` for what is produced while handling under `span`: its own trace and
/// span id, so the next stage's span is its child. Without an exporting tracer the span has
/// no id; the trace id still travels, with a fresh span id.
pub fn traceparent(span: &tracing::Span, trace_id: &str) -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() && opentelemetry::trace::TraceId::from_hex(trace_id).is_ok_and(|t| t == sc.trace_id()) {
        crate::kafka::message::traceparent(trace_id, sc.span_id().to_bytes())
    } else {
        crate::kafka::message::traceparent(trace_id, crate::kafka::message::new_span_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_reviewed_reason_stays_at_zero_and_a_new_one_joins() {
        use crate::audit_store::OpenReview;
        let r =
            |crm: &str, reason: &str, open: i64, age: f64| OpenReview { crm: crm.into(), reason: reason.into(), open, oldest_age_s: age };
        let before = vec![r("hubspot", "PERMISSION_DENIED", 2, 90.0), r("none", "INVALID_PHONE", 1, 10.0)];
        let now = with_reviewed_at_zero(&before, vec![r("zoho", "RETRIES_EXHAUSTED", 1, 5.0), r("none", "INVALID_PHONE", 3, 70.0)]);
        assert_eq!(
            now,
            vec![r("hubspot", "PERMISSION_DENIED", 0, 0.0), r("none", "INVALID_PHONE", 3, 70.0), r("zoho", "RETRIES_EXHAUSTED", 1, 5.0)]
        );
    }

    #[test]
    fn remaining_keeps_the_tenants_closest_to_each_limit_and_forgets_the_silent() {
        let mut r = LowestRemaining::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for t in 0..10_000u64 {
            r.record("hubspot", &format!("t{t}"), "10s", (t * 7919) % 10_000, t0);
        }
        r.record("zoho", "z", "credits", 5, t0);
        let now = r.current(t0);
        let hubspot: Vec<u64> = now.iter().filter(|e| e.0 == "hubspot").map(|e| e.3).collect();
        assert_eq!(now.len(), 4, "3 per (crm, limit), whatever the number of tenants: {now:?}");
        let mut lowest = hubspot.clone();
        lowest.sort();
        assert_eq!(lowest, vec![0, 1, 2], "the three closest to the limit");
        // A tenant heard of again moves; one not heard of leaves after the TTL.
        r.record("hubspot", "t0", "10s", 9_999, t0 + Duration::from_secs(30));
        r.record("hubspot", "late", "10s", 50, t0 + Duration::from_secs(30));
        assert!(!r.current(t0 + Duration::from_secs(30)).iter().any(|e| e.1 == "t0"), "t0 has plenty left now");
        let later: Vec<String> = r.current(t0 + Duration::from_secs(61)).into_iter().map(|e| e.1).collect();
        assert_eq!(later, vec!["late".to_string()], "those not heard of since t0 have left");
        assert!(r.current(t0 + Duration::from_secs(91)).is_empty(), "all silent past the TTL");
    }
}
