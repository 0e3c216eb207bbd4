//! reconciler: on a cadence per tenant and CRM, compares what crm-sync wrote with what each
//! CRM holds and repairs what the contracts allow (see the library's docs). Replicas share
//! the work: each (tenant, CRM) pass is taken by one replica per interval, through Redis.

use clap::Parser;
use crm_common::config::CommonArgs;
use crm_common::events::Crm;
use crm_connectors::connector::Inspect;
use reconciler::{build, Options, Reconciler};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "reconciler", about = "Finds and repairs drift between what crm-sync wrote and what the CRMs hold")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    opts: Options,
    /// CRMs to reconcile (repeat or comma-separate); all four when absent.
    #[arg(long = "crm", env = "RECONCILE_CRMS", value_delimiter = ',')]
    crms: Vec<Crm>,
    /// How often each tenant is checked in each CRM, unless its config says
    /// `reconcile_every`.
    #[arg(long, env = "RECONCILE_EVERY", default_value = "1h", value_parser = humantime::parse_duration)]
    every: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = crm_common::telemetry::init("reconciler", &cli.common)?;
    let crms = if cli.crms.is_empty() { vec![Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive] } else { cli.crms.clone() };
    let stop = crm_common::shutdown::service();
    let mut tasks = vec![];
    for crm in crms {
        // The tenants' overrides are applied with the tenants file (`build`).
        let contract = crm_connectors::contract::Contracts::load(&cli.opts.contracts_dir, crm.as_str())?;
        let (common, opts, every, stop) = (cli.common.clone(), cli.opts.clone(), cli.every, stop.clone());
        let task: tokio::task::JoinHandle<anyhow::Result<()>> =
            crm_connectors::with_connector!(crm, contract, &opts.urls.clone(), opts.http_timeout, |c| {
                let r = build(c, &common, &opts).await?;
                tokio::spawn(async move { serve(r, opts, every, stop).await })
            });
        tasks.push(task);
    }
    tracing::info!(every = ?cli.every, lookback = ?cli.opts.lookback, reserve_pct = cli.opts.reserve_pct, "reconciler started");
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn serve<C: Inspect>(r: Reconciler<C>, opts: Options, every: Duration, stop: CancellationToken) -> anyhow::Result<()> {
    let crm = r.connector.crm().as_str();
    crm_common::health::ready();
    while !stop.is_cancelled() {
        crm_common::health::beat();
        for tenant in r.tenant_ids() {
            if stop.is_cancelled() {
                break;
            }
            let cadence = r.cadence(&tenant, every);
            match r.take_turn(&tenant, cadence).await {
                Ok(true) => {
                    let from = crm_common::clock::now_ms() - opts.lookback.as_millis() as i64;
                    r.pass(&tenant, from).await;
                    crm_common::health::beat();
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(tenant, crm, error = %e, "Redis unavailable; passes wait for it"),
            }
            // The attribution check, on its own (weekly) cadence over its longer look-back.
            if let Ok(true) = r.take_attribution_turn(&tenant, opts.attribution_every).await {
                let from = crm_common::clock::now_ms() - opts.attribution_lookback.as_millis() as i64;
                r.attribution_pass(&tenant, from).await;
                crm_common::health::beat();
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    tracing::info!(crm, "reconciler stopped");
    Ok(())
}
