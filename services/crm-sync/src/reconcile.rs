//! `crm-sync reconcile`: run a reconciliation pass now (for one tenant, one CRM, or all),
//! or with `--report`, print the latest parity report per tenant and CRM from the audit
//! store without touching any CRM.

use crm_common::audit_store::{AuditStore, ParityReport};
use crm_common::config::CommonArgs;
use crm_common::events::Crm;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    opts: reconciler::Options,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only these CRMs (repeat or comma-separate); all four when absent.
    #[arg(long = "crm", value_delimiter = ',')]
    crms: Vec<Crm>,
    /// Check writes made since this long ago (default: the lookback).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Run the attribution check (owners, companies and deals against what was written)
    /// over RECONCILE_ATTRIBUTION_LOOKBACK (30 days) unless --since says otherwise.
    #[arg(long)]
    attribution: bool,
    /// Print the latest stored parity report instead of running a pass.
    #[arg(long)]
    report: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit 3 when any pass found drift it did not repair (dead-lettered or deferred) or a
    /// contract field missing from a CRM, for scripts and CI.
    #[arg(long)]
    fail_on_drift: bool,
}

pub fn run(args: ReconcileArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let reports = rt.block_on(reports(&args))?;
    if args.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
    } else if reports.is_empty() {
        println!("no reconciliation passes{}", if args.report { " stored yet" } else { ": no tenant is connected to the CRMs asked for" });
    } else {
        print!("{}", reconciler::render_reports(&reports));
    }
    let unsettled = reports.iter().any(|r| r.dead_lettered > 0 || r.deferred > 0 || !r.missing_fields.is_empty() || r.error.is_some());
    if args.fail_on_drift && unsettled {
        std::process::exit(3);
    }
    Ok(())
}

async fn reports(args: &ReconcileArgs) -> anyhow::Result<Vec<ParityReport>> {
    let wanted = |crm: &str| args.crms.is_empty() || args.crms.iter().any(|c| c.as_str() == crm);
    if args.report {
        let mut store = AuditStore::connect(&args.common.database_url).await?;
        store.migrate().await?;
        let runs = store.latest_runs(args.tenant.as_deref()).await?;
        return Ok(runs.into_iter().filter(|r| wanted(&r.crm)).collect());
    }
    let crms = if args.crms.is_empty() { vec![Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive] } else { args.crms.clone() };
    let since = args.since.unwrap_or(if args.attribution { args.opts.attribution_lookback } else { args.opts.lookback });
    let from = crm_common::clock::now_ms() - since.as_millis() as i64;
    let mut out = vec![];
    for crm in crms {
        // The tenants' overrides are applied with the tenants file (`reconciler::build`).
        let contract = crm_connectors::contract::Contracts::load(&args.opts.contracts_dir, crm.as_str())?;
        let got: Vec<ParityReport> = crm_connectors::with_connector!(crm, contract, &args.opts.urls, args.opts.http_timeout, |c| {
            let r = reconciler::build(c, &args.common, &args.opts).await?;
            let mut got = vec![];
            for t in r.tenant_ids().into_iter().filter(|t| args.tenant.as_ref().is_none_or(|w| w == t)) {
                got.push(if args.attribution { r.attribution_pass(&t, from).await } else { r.pass(&t, from).await });
            }
            got
        });
        out.extend(got);
    }
    Ok(out)
}
