//! Configuration every service reads, from flags or the environment (DESIGN §9).
//! Flags win over environment variables; `--help` on any binary lists both.

use crate::events::ActivityKind;
use clap::Args;
use std::path::PathBuf;

/// Where the broker is and how to reach it: every binary that talks to Kafka takes these.
/// Global, so a tool with subcommands (`crm-sync dlq …`) takes them after the subcommand too.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092", global = true)]
    pub kafka_bootstrap_servers: String,

    /// Extra librdkafka settings, `key=value` comma-separated (e.g.
    /// `security.protocol=SASL_SSL,session.timeout.ms=10000`). Applied last, to every client.
    #[arg(long, env = "KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_kv, global = true)]
    pub kafka_options: Vec<(String, String)>,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Redis URL (deduper, writers, reconciler); with `REDIS_CLUSTER`, one or more
    /// comma-separated seed nodes of a Redis Cluster.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Speak to a Redis Cluster (`REDIS_URL` names its seed nodes) instead of one node.
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,

    /// Prefix of every Redis key crm-sync writes (`<prefix>:{tenant}:…`), so several
    /// deployments (or test runs) can share one Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "crm-sync")]
    pub redis_key_prefix: String,

    /// PostgreSQL URL (audit-sink, trace, dlq, reconciler).
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,

    /// Path of the tenants file (TOML, see deploy/tenants.example.toml).
    #[arg(long, env = "TENANTS_CONFIG", default_value = "deploy/tenants.example.toml")]
    pub tenants_config: PathBuf,

    /// How often the tenants file is read for changes (also on SIGHUP); a changed file is
    /// checked before it is applied, and a bad one keeps the running config.
    #[arg(long, env = "TENANTS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tenants_reload_interval: std::time::Duration,

    /// How long a stage after the normaliser waits for its tenants file to name a tenant it
    /// meets and does not know (an earlier stage reloaded first) before it dead-letters the
    /// input TENANT_NOT_CONFIGURED.
    #[arg(long, env = "TENANT_WAIT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub tenant_wait: std::time::Duration,

    /// OTLP/HTTP collector base URL (e.g. http://otel-collector:4318). Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// OTLP encoding: `http/protobuf` (collectors' default) or `http/json`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = ["http/protobuf", "http/json"])]
    pub otel_exporter_otlp_protocol: String,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Where /livez and /readyz are served (e.g. 0.0.0.0:8080); unset: not served.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,

    /// /livez fails once the main loop has not ticked for this long.
    #[arg(long, env = "HEALTH_STALL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub health_stall: std::time::Duration,

    #[command(flatten)]
    pub topics: Topics,
}

impl CommonArgs {
    /// The tenants file, loaded and `build` for this stage, then followed while the service
    /// runs (every `TENANTS_RELOAD_INTERVAL` and on SIGHUP).
    pub fn live_tenants<T: Send + Sync + 'static>(
        &self,
        build: Box<crate::live_tenants::Build<T>>,
    ) -> anyhow::Result<crate::live_tenants::LiveTenants<T>> {
        let live = crate::live_tenants::LiveTenants::load(&self.tenants_config, build)?;
        live.watch(self.tenants_reload_interval, tokio_util::sync::CancellationToken::new());
        Ok(live)
    }

    /// `REDIS_URL` and `REDIS_CLUSTER` as one target, checked.
    pub fn redis_target(&self) -> anyhow::Result<crate::redis_conn::RedisTarget> {
        crate::redis_conn::RedisTarget::new(&self.redis_url, self.redis_cluster).map_err(anyhow::Error::msg)
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("'{s}' is not key=value"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Topic names: defaults from DESIGN §1, each overridable.
#[derive(Debug, Clone, Args)]
pub struct Topics {
    #[arg(long, env = "TOPIC_CALLS_RAW", default_value = "calls.raw")]
    pub calls_raw: String,
    #[arg(long, env = "TOPIC_CALLS_NORMALISED", default_value = "calls.normalised")]
    pub calls_normalised: String,
    /// EmailEvents from mail syncs (an input contract, like calls.raw).
    #[arg(long, env = "TOPIC_EMAILS_RAW", default_value = "emails.raw")]
    pub emails_raw: String,
    #[arg(long, env = "TOPIC_EMAILS_NORMALISED", default_value = "emails.normalised")]
    pub emails_normalised: String,
    /// MeetingEvents from calendar syncs (an input contract, like calls.raw).
    #[arg(long, env = "TOPIC_MEETINGS_RAW", default_value = "meetings.raw")]
    pub meetings_raw: String,
    #[arg(long, env = "TOPIC_MEETINGS_NORMALISED", default_value = "meetings.normalised")]
    pub meetings_normalised: String,
    /// LeadEvents from forms, ad platforms, webinars and imports (an input contract, like
    /// calls.raw).
    #[arg(long, env = "TOPIC_LEADS_RAW", default_value = "leads.raw")]
    pub leads_raw: String,
    #[arg(long, env = "TOPIC_LEADS_NORMALISED", default_value = "leads.normalised")]
    pub leads_normalised: String,
    /// Prefix of the per-CRM write topics: `<prefix><crm>`.
    #[arg(long, env = "TOPIC_CRM_WRITES_PREFIX", default_value = "crm.writes.")]
    pub crm_writes_prefix: String,
    #[arg(long, env = "TOPIC_AUDIT", default_value = "sync.audit")]
    pub audit: String,
    #[arg(long, env = "TOPIC_DLQ", default_value = "sync.dlq")]
    pub dlq: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            calls_raw: "calls.raw".into(),
            calls_normalised: "calls.normalised".into(),
            emails_raw: "emails.raw".into(),
            emails_normalised: "emails.normalised".into(),
            meetings_raw: "meetings.raw".into(),
            meetings_normalised: "meetings.normalised".into(),
            leads_raw: "leads.raw".into(),
            leads_normalised: "leads.normalised".into(),
            crm_writes_prefix: "crm.writes.".into(),
            audit: "sync.audit".into(),
            dlq: "sync.dlq".into(),
        }
    }
}

impl Topics {
    /// The kinds the pipeline carries, each on its own raw and normalised topic.
    pub const KINDS: [ActivityKind; 4] = [ActivityKind::Call, ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead];

    /// The raw topic `kind` arrives on (an input contract).
    pub fn raw(&self, kind: ActivityKind) -> &str {
        match kind {
            ActivityKind::Email => &self.emails_raw,
            ActivityKind::Meeting => &self.meetings_raw,
            ActivityKind::Lead => &self.leads_raw,
            ActivityKind::Call | ActivityKind::Unknown => &self.calls_raw,
        }
    }

    /// The topic the normaliser writes `kind` to.
    pub fn normalised(&self, kind: ActivityKind) -> &str {
        match kind {
            ActivityKind::Email => &self.emails_normalised,
            ActivityKind::Meeting => &self.meetings_normalised,
            ActivityKind::Lead => &self.leads_normalised,
            ActivityKind::Call | ActivityKind::Unknown => &self.calls_normalised,
        }
    }

    /// The kind whose raw topic `topic` is.
    pub fn raw_kind(&self, topic: &str) -> Option<ActivityKind> {
        Self::KINDS.into_iter().find(|k| self.raw(*k) == topic)
    }

    /// The kind whose normalised topic `topic` is.
    pub fn normalised_kind(&self, topic: &str) -> Option<ActivityKind> {
        Self::KINDS.into_iter().find(|k| self.normalised(*k) == topic)
    }

    /// The kind a raw or normalised topic carries (None for topics of several kinds).
    pub fn kind_of(&self, topic: &str) -> Option<ActivityKind> {
        self.raw_kind(topic).or_else(|| self.normalised_kind(topic))
    }

    pub fn crm_writes(&self, crm: crate::events::Crm) -> String {
        [self.crm_writes_prefix.as_str(), crm.as_str()].concat()
    }

    /// Every topic the pipeline uses, for the dev broker and deploy scripts.
    pub fn all(&self) -> Vec<String> {
        let mut v: Vec<String> = Self::KINDS.iter().flat_map(|k| [self.raw(*k).to_string(), self.normalised(*k).to_string()]).collect();
        v.extend(crate::events::Crm::CONNECTED.iter().map(|c| self.crm_writes(*c)));
        v.push(self.audit.clone());
        v.push(self.dlq.clone());
        v
    }
}

/// Knobs of the consume → process → produce → commit loop.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Consumer group id (one per service; defaults to the service name).
    #[arg(long, env = "CONSUMER_GROUP")]
    pub consumer_group: Option<String>,
    /// Most input messages handled as one batch.
    #[arg(long, env = "PIPELINE_BATCH", default_value_t = 500)]
    pub batch: usize,
    /// Most input messages whose outputs may await broker acknowledgement at once.
    #[arg(long, env = "PIPELINE_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// How often acknowledged progress is committed to the broker, milliseconds.
    #[arg(long, env = "PIPELINE_COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub commit_interval_ms: u64,
}
