//! crm-sync: the operator's command.

mod backfill;
mod dev;
mod dlq;
mod reconcile;
mod schemas;
mod tenants;
mod topics;
mod trace;
mod when;

use clap::{Parser, Subcommand};
use crm_common::config::Topics;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "crm-sync", about = "crm-sync operations: trace a call, review the DLQ, reconcile, backfill, dev broker, dev mode")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Host an in-memory Kafka-protocol broker (librdkafka mock cluster) on 127.0.0.1 with
    /// the pipeline's topics, print its bootstrap address, and run until stopped.
    DevBroker {
        /// Partitions per topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Mock brokers in the cluster.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Also create these topics (comma-separated).
        #[arg(long, value_delimiter = ',')]
        extra_topics: Vec<String>,
        /// Write `KAFKA_BOOTSTRAP_SERVERS=<addr>` to this file too (for scripts).
        #[arg(long)]
        env_file: Option<PathBuf>,
        #[command(flatten)]
        topics: Topics,
    },
    /// Run the whole pipeline on this machine: dev broker, every service, sample calls from
    /// several tenants, and a report of what happened to each.
    Dev(dev::DevArgs),
    /// A call's whole path across every stage, from the audit store.
    Trace(trace::TraceArgs),
    /// Review the dead-letter queue: list, show, replay, ack, purge.
    Dlq(dlq::DlqArgs),
    /// Compare what was written with what each CRM holds now and repair what the contracts
    /// allow (`--report`: the latest parity per tenant and CRM).
    Reconcile(reconcile::ReconcileArgs),
    /// Re-read calls.raw for a tenant and a time range (after a source or pipeline outage)
    /// and send those calls through the pipeline again; idempotency keeps them to one
    /// record each.
    Backfill(backfill::BackfillArgs),
    /// Every schema crm-sync writes or reads: its fingerprint on the wire, its topic, its
    /// file (what an upstream producer or a data team needs).
    Schemas(schemas::SchemasArgs),
    /// The pipeline's topics as code: check the cluster against deploy/topics.toml, or
    /// apply it (create, add partitions, set retention and the rest; report drift).
    Topics(topics::TopicsArgs),
    /// Onboarding: whether each tenant's CRM connections will work (credentials, access,
    /// the contract's fields), with a fix for each failure.
    Tenants(tenants::TenantsArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::DevBroker { partitions, brokers, extra_topics, env_file, topics } => {
            let mut all = topics.all();
            all.extend(extra_topics);
            let broker = crm_dev::DevBroker::start(brokers, partitions, &all)?;
            let line = format!("KAFKA_BOOTSTRAP_SERVERS={}", broker.bootstrap_servers());
            if let Some(f) = env_file {
                std::fs::write(&f, format!("{line}\n"))?;
            }
            println!("{line}");
            eprintln!("dev broker up: {} topics × {partitions} partitions: {}", all.len(), all.join(", "));
            std::io::stdout().flush()?;
            // The mock cluster lives on this thread; wait here for a signal.
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
                crm_common::shutdown::on_signals().cancelled().await;
            });
            drop(broker);
            Ok(())
        }
        Cmd::Dev(args) => dev::run(args),
        Cmd::Trace(args) => trace::run(args),
        Cmd::Dlq(args) => dlq::run(args),
        Cmd::Reconcile(args) => reconcile::run(args),
        Cmd::Backfill(args) => backfill::run(args),
        Cmd::Schemas(args) => schemas::run(args),
        Cmd::Topics(args) => topics::run(args),
        Cmd::Tenants(args) => tenants::run(args),
    }
}
