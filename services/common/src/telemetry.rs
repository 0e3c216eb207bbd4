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

pub fn init(service: &'static str, args: &CommonArgs) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    let (meters, tracer) = match &args.otel_exporter_otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            let endpoint = endpoint.trim_end_matches('/').to_string();
            // The OTLP HTTP client is blocking and must not be built on a runtime thread.
            let (m, t) = std::thread::spawn(move || build_exporters(service, &endpoint))
                .join()
                .map_err(|_| anyhow::anyhow!("building OTLP exporters panicked"))??;
            (Some(m), Some(t))
        }
        _ => (None, None),
    };
    let otel_layer = tracer
        .as_ref()
        .map(|t| tracing_opentelemetry::layer().with_tracer(t.tracer(service)));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let res = match args.log_format {
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init(),
    };
    // A second init (tests, dev mode) keeps the first subscriber.
    let _ = res;
    if let Some(m) = &meters {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    Ok(Telemetry { meters, tracer })
}

fn build_exporters(
    service: &'static str,
    endpoint: &str,
) -> anyhow::Result<(SdkMeterProvider, SdkTracerProvider)> {
    let resource = Resource::builder().with_service_name(service).build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/metrics"))
        .build()?;
    let meters = SdkMeterProvider::builder()
        .with_periodic_exporter(metric_exporter)
        .with_resource(resource.clone())
        .build();
    let span_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build()?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(span_exporter)
        .with_resource(resource)
        .build();
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
            messages: meter
                .u64_counter("crm_sync.messages")
                .with_description("Input messages handled, by outcome")
                .build(),
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

    pub fn message(&self, outcome: &'static str) {
        self.messages
            .add(1, &[KeyValue::new("stage", self.stage), KeyValue::new("outcome", outcome)]);
    }

    pub fn batch_latency(&self, ms: f64) {
        self.latency.record(ms, &[KeyValue::new("stage", self.stage)]);
    }

    pub fn produced(&self, topic: &str) {
        self.produced
            .add(1, &[KeyValue::new("stage", self.stage), KeyValue::new("topic", topic.to_string())]);
    }
}
