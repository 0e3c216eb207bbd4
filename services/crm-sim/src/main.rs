//! `crm-sim`: serves the four CRM simulators and the admin API on one port and prints
//! `CRM_SIM_URL=http://host:port` once it is listening (port 0 picks a free one).

use clap::Parser;
use crm_sim::{admin, app, Sim};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "crm-sim", about = "Local simulators of HubSpot, Salesforce, Zoho CRM and Pipedrive, with an /admin API")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CRM_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,
    /// URL clients use to reach this process, when not the listen address (behind a proxy or
    /// in a container); token responses point clients at it.
    #[arg(long, env = "CRM_SIM_PUBLIC_URL")]
    public_url: Option<String>,
    /// JSON file of accounts to create at start: {"accounts": [<POST /admin/accounts body>...]}.
    #[arg(long, env = "CRM_SIM_SEED")]
    seed: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(crm_common::telemetry::colour_logs())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let sim = Sim::new();
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = args.public_url.unwrap_or_else(|| format!("http://{addr}"));
    *sim.public_url.write().unwrap() = url.trim_end_matches('/').to_string();
    if let Some(path) = &args.seed {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read seed {}: {e}", path.display()))?;
        let seed: admin::Seed = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("bad seed {}: {e}", path.display()))?;
        for acct in seed.accounts {
            let name = format!("{} {}", acct.crm.as_str(), acct.account);
            admin::create_account(&sim, acct).map_err(|e| anyhow::anyhow!("seed account {name}: {e}"))?;
        }
    }
    println!("CRM_SIM_URL={url}");
    std::io::stdout().flush()?;
    tracing::info!(%url, "crm-sim listening: /hubspot /salesforce /zoho /pipedrive /admin");
    axum::serve(listener, app(sim)).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
