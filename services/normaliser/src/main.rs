//! normaliser: calls.raw → calls.normalised (DESIGN §1–§3). One audit record per input;
//! inputs that cannot be normalised go to sync.dlq with their original bytes and a reason.

mod normalise;

use clap::Parser;
use crm_common::clock::now_ms;
use crm_common::codec;
use crm_common::config::{CommonArgs, PipelineArgs};
use crm_common::emit::{Emitter, Subject};
use crm_common::events::{AuditOutcome, CallEvent, DlqReason, Stage};
use crm_common::kafka::{InMessage, OutRecord};
use crm_common::phone;
use crm_common::pipeline::{self, Handler, PipelineConfig, Processed, Transient};
use crm_common::tenants::Tenants;

#[derive(Parser)]
#[command(name = "normaliser", about = "calls.raw → calls.normalised: phone numbers to E.164")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The largest calls.raw event accepted, in bytes: a bigger one is dead-lettered as
    /// VALIDATION rather than carried into every later topic and CRM request.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = 256 * 1024)]
    max_event_bytes: usize,
}

struct Normaliser {
    max_event_bytes: usize,
    tenants: Tenants,
    phones: phone::E164Cache,
    emit: Emitter,
    output_topic: String,
}

impl Normaliser {
    fn one(&self, input: &InMessage) -> Processed {
        let anonymous = Subject { tenant_id: "", call_id: None, crm: None, version: None, kind: None };
        let size = input.payload.as_ref().map_or(0, Vec::len);
        if size > self.max_event_bytes {
            let detail = format!("oversized: the event is {size} bytes; the limit is {} (MAX_EVENT_BYTES)", self.max_event_bytes);
            return dead(self.emit.dead_letter(input, &anonymous, "normalise", DlqReason::Validation, detail.clone(), detail));
        }
        let ev: CallEvent = match codec::decode(input.payload.as_deref().unwrap_or_default()) {
            Ok(ev) => ev,
            Err(e) => {
                let detail = format!("calls.raw message is not a CallEvent: {e}");
                return dead(self.emit.dead_letter(input, &anonymous, "normalise", DlqReason::SchemaInvalid, detail.clone(), detail));
            }
        };
        let subject = Subject {
            tenant_id: &ev.tenant_id,
            call_id: Some(&ev.call_id),
            crm: None,
            version: Some(ev.version),
            kind: Some(crm_common::events::ActivityKind::Call),
        };
        let Some(tenant) = self.tenants.get(&ev.tenant_id) else {
            // Debug-quoted: an id is input, and may hold anything.
            let detail = format!("tenant {:?} is not in TENANTS_CONFIG", ev.tenant_id);
            return dead(self.emit.dead_letter(input, &subject, "normalise", DlqReason::TenantNotConfigured, detail.clone(), detail));
        };
        match normalise::normalise(&ev, tenant, &self.phones, now_ms()) {
            Ok(call) => {
                let shown = |n: &str| if tenant.show_phone_numbers_in_audit { n.to_string() } else { phone::mask(n) };
                let mut audit = self.emit.audit(
                    input,
                    &subject,
                    "normalise",
                    AuditOutcome::Succeeded,
                    format!("normalised {} → {} (region {})", shown(&call.from_e164), shown(&call.to_e164), call.region_used),
                );
                audit.attributes.insert("region_used".into(), call.region_used.clone());
                audit.attributes.insert("source".into(), call.source.clone());
                let mut out = OutRecord::new(
                    &self.output_topic,
                    &call.tenant_id,
                    codec::encode(&call).expect("NormalisedCall always encodes"),
                    &input.trace_id,
                );
                // A backfilled call stays marked as one down the pipeline (the deduper lets
                // it past its mark).
                if let Some(run) = input.header(crm_common::kafka::BACKFILL) {
                    out.headers.push((crm_common::kafka::BACKFILL.to_string(), String::from_utf8_lossy(run).into_owned()));
                    audit.attributes.insert("backfill".into(), String::from_utf8_lossy(run).into_owned());
                }
                Processed { outputs: vec![out, self.emit.audit_record(&audit)], outcome: "normalised" }
            }
            Err(r) => dead(self.emit.dead_letter(input, &subject, "normalise", r.reason, r.detail, r.audit_detail)),
        }
    }
}

fn dead(records: [OutRecord; 2]) -> Processed {
    Processed { outputs: records.into(), outcome: "dead_lettered" }
}

impl Handler for Normaliser {
    async fn handle(&self, batch: &[InMessage]) -> Result<Vec<Processed>, Transient> {
        Ok(batch.iter().map(|m| self.one(m)).collect())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = crm_common::telemetry::init("normaliser", &cli.common)?;
    let tenants = Tenants::load(&cli.common.tenants_config)?;
    tracing::info!(tenants = tenants.len(), "tenants loaded");
    let handler = Normaliser {
        max_event_bytes: cli.max_event_bytes,
        tenants,
        phones: phone::E164Cache::new(100_000),
        emit: Emitter::new(Stage::Normaliser, cli.common.topics.clone()),
        output_topic: cli.common.topics.calls_normalised.clone(),
    };
    let cfg = PipelineConfig {
        service: "normaliser",
        input_topics: vec![cli.common.topics.calls_raw.clone()],
        common: cli.common,
        args: cli.pipeline,
    };
    pipeline::run(cfg, handler, crm_common::shutdown::service()).await
}
