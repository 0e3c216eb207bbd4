//! deduper: calls.normalised, emails.normalised, meetings.normalised → crm.writes.<crm>
//! (DESIGN §1, §4). For each normalised activity it asks Redis whether it was seen inside its
//! dedup window (one pipelined round trip per batch), then fans a new activity or a newer
//! version out as one write request per CRM the tenant has connected for that kind (a
//! CrmWriteRequest for a call, an ActivityWriteRequest for an email or a meeting). Repeats are suppressed and audited; unknown tenants and undecodable
//! input go to sync.dlq. When Redis is unreachable the batch fails as a whole and is retried:
//! nothing is emitted or committed until Redis answers again.

mod activity;
mod fanout;

use activity::Activity;

use clap::Parser;
use crm_common::config::{CommonArgs, PipelineArgs, Topics};
use crm_common::dedup::{DedupStore, MarkRequest};
use crm_common::emit::{Emitter, Subject};
use crm_common::events::{DlqReason, Stage};
use crm_common::kafka::InMessage;
use crm_common::live_tenants::{LiveTenants, Loaded};
use crm_common::pipeline::{self, Handler, PipelineConfig, Processed, Transient};
use crm_common::tenants::ResolvedTenant;
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "deduper", about = "normalised activities → crm.writes.<crm>: repeats suppressed, one request per connected CRM")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

struct Deduper {
    tenants: LiveTenants<()>,
    /// TENANT_WAIT: how long an input whose tenant this deduper does not know waits for the
    /// tenants file to name it.
    tenant_wait: Duration,
    store: DedupStore,
    redis: String,
    fanout: fanout::Fanout,
}

/// What became of an input before Redis was asked.
enum Step<'a> {
    Done(Processed),
    Mark {
        act: Box<Activity<'a>>,
        tenant: &'a ResolvedTenant,
    },
    /// Its tenant is not in this deduper's config (yet): the file is waited on first.
    Unknown(String),
}

impl Deduper {
    /// `input` dead-lettered, done, or to be marked; `Unknown` when its tenant is not in
    /// `cfg` and may yet be (`wait`).
    fn classify<'a>(&'a self, input: &'a InMessage, cfg: &'a Loaded<()>, wait: bool) -> Step<'a> {
        let emit = &self.fanout.emit;
        let anonymous = Subject { tenant_id: "", call_id: None, crm: None, version: None, kind: None };
        let act = match Activity::decode(input, &self.fanout.topics) {
            Ok(a) => a,
            Err(detail) => {
                return Step::Done(fanout::dead(emit.dead_letter(
                    input,
                    &anonymous,
                    "dedup",
                    DlqReason::SchemaInvalid,
                    detail.clone(),
                    detail,
                )));
            }
        };
        let subject = Subject {
            tenant_id: act.tenant_id(),
            call_id: Some(act.source_id()),
            crm: None,
            version: Some(act.version()),
            kind: Some(act.kind()),
        };
        if act.source_id().is_empty() {
            let detail = format!("the {}'s id is empty: it cannot be deduplicated or written without it", act.kind().as_str());
            return Step::Done(fanout::dead(emit.dead_letter(input, &subject, "dedup", DlqReason::Validation, detail.clone(), detail)));
        }
        let Some(tenant) = cfg.tenants.get(act.tenant_id()) else {
            if wait && !cfg.settled(act.tenant_id()) {
                return Step::Unknown(act.tenant_id().to_string());
            }
            let detail = cfg.why_unknown(act.tenant_id());
            return Step::Done(fanout::dead(emit.dead_letter(
                input,
                &subject,
                "dedup",
                DlqReason::TenantNotConfigured,
                detail.clone(),
                detail,
            )));
        };
        if tenant.crms_taking(act.kind()).next().is_none() {
            return Step::Done(self.fanout.no_crms(input, &act, tenant));
        }
        Step::Mark { act: Box::new(act), tenant }
    }
}

impl Handler for Deduper {
    async fn handle(&self, batch: &[InMessage]) -> Result<Vec<Processed>, Transient> {
        // Declared first: steps borrow from both.
        let (cfg, later);
        cfg = self.tenants.current();
        let mut steps: Vec<Step> = pipeline::map_in_parallel(batch, |m| self.classify(m, &cfg, true));
        let unknown: BTreeSet<String> =
            steps.iter().filter_map(|s| if let Step::Unknown(id) = s { Some(id.clone()) } else { None }).collect();
        if !unknown.is_empty() {
            // The normaliser accepted these tenants: this deduper's file is about to name
            // them (or has removed them).
            later = self.tenants.wait_until(self.tenant_wait, |l| unknown.iter().all(|id| l.settled(id))).await;
            for (m, step) in batch.iter().zip(steps.iter_mut()) {
                if matches!(step, Step::Unknown(_)) {
                    *step = self.classify(m, &later, false);
                }
            }
        }
        let requests: Vec<MarkRequest> = batch
            .iter()
            .zip(&steps)
            .filter_map(|(input, step)| match step {
                Step::Mark { act, tenant } => Some(MarkRequest {
                    tenant_id: act.tenant_id().to_string(),
                    call_id: act.mark_id(),
                    version: act.version(),
                    input: input.place(),
                    window_ms: tenant.dedup_window_for(act.source()).as_millis() as u64,
                }),
                Step::Done(_) | Step::Unknown(_) => None,
            })
            .collect();
        let marks = self
            .store
            .mark_many(&requests)
            .await
            .map_err(|e| Transient(format!("Redis at {} failed while marking {} activities: {e}", self.redis, requests.len())))?;
        // Inputs ruled on by Redis get their outputs built on every core; the rest are done.
        let mut marks = marks.into_iter();
        let mut done = Vec::with_capacity(batch.len());
        let mut ruled = vec![];
        for (input, step) in batch.iter().zip(steps) {
            match step {
                Step::Done(p) => done.push(Some(p)),
                Step::Unknown(_) => unreachable!("classified again after the wait"),
                Step::Mark { act, tenant } => {
                    done.push(None);
                    ruled.push((input, act, tenant, marks.next().expect("one mark per request")));
                }
            }
        }
        let mut decided =
            pipeline::map_in_parallel(&ruled, |(input, act, tenant, mark)| self.fanout.decide(input, act, tenant, mark)).into_iter();
        Ok(done.into_iter().map(|d| d.unwrap_or_else(|| decided.next().expect("one decision per mark"))).collect())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = crm_common::telemetry::init("deduper", &cli.common)?;
    let tenants = cli.common.live_tenants::<()>(Box::new(|_, _| Ok(())))?;
    let target = cli.common.redis_target()?;
    let redis = target.redacted();
    let store = DedupStore::lazy(&target, &cli.common.redis_key_prefix).map_err(|e| anyhow::anyhow!("REDIS_URL {redis}: {e}"))?;
    tracing::info!(tenants = tenants.current().tenants.len(), redis, prefix = cli.common.redis_key_prefix, "tenants loaded");
    let handler = Deduper {
        tenants,
        tenant_wait: cli.common.tenant_wait,
        store,
        redis,
        fanout: fanout::Fanout { emit: Emitter::new(Stage::Deduper, cli.common.topics.clone()), topics: cli.common.topics.clone() },
    };
    let cfg = PipelineConfig {
        service: "deduper",
        input_topics: Topics::KINDS.iter().map(|k| cli.common.topics.normalised(*k).to_string()).collect(),
        common: cli.common,
        args: cli.pipeline,
    };
    pipeline::run(cfg, handler, crm_common::shutdown::service()).await
}
