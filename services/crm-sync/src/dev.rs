//! `crm-sync dev`: the whole pipeline on one machine. Hosts the dev broker in this process,
//! starts every service built so far as child processes against it, feeds sample calls from
//! several tenants with messy numbers (and some bad input), and reports what happened to
//! each. Grows with every service.

use crm_common::dev_broker::{sibling_binary, DevBroker};
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::{CallDirection, CallEvent, CallOutcome, DeadLetter, NormalisedCall};
use crm_common::pipeline::InMessage;
use crm_common::topic_reader::TopicReader;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Partitions per topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Report and exit instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Tenants file; defaults to the example in deploy/ (compiled in).
    #[arg(long)]
    tenants_config: Option<PathBuf>,
}

/// Child services, stopped with SIGTERM (graceful) when dropped.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            // SAFETY: kill(2) on a pid we spawned; no memory is shared.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for (name, c) in &mut self.0 {
            match c.wait() {
                Ok(s) => eprintln!("  {name} stopped ({s})"),
                Err(e) => eprintln!("  {name}: {e}"),
            }
        }
    }
}

pub fn sample_calls() -> Vec<(String, Vec<u8>)> {
    let call = |tenant: &str, id: &str, dir: CallDirection, from: &str, to: &str, hint: Option<&str>| CallEvent {
        tenant_id: tenant.into(),
        call_id: id.into(),
        source: "dev-pbx".into(),
        version: 1,
        direction: dir,
        from_number: from.into(),
        to_number: to.into(),
        region_hint: hint.map(Into::into),
        started_at: 1_767_225_600_000,
        ended_at: Some(1_767_225_725_000),
        duration_s: Some(125),
        outcome: Some(CallOutcome::Answered),
        agent_id: "agent-7".into(),
        agent_email: Some("agent7@example.com".into()),
        recording_url: None,
        notes: Some("dev sample".into()),
        attributes: HashMap::new(),
    };
    use CallDirection::*;
    let calls = [
        call("acme", "acme-1001", Inbound, "650.253.0000", "+1 415 555 2671", None),
        call("acme", "acme-1002", Outbound, "(415) 555-2671", "+44 (0)20 7946 0958", None),
        call("acme", "acme-1003", Outbound, "415-555-2671", "011 44 20 7946 0958", None),
        call("globex", "globex-1", Inbound, "020 7946 0958", "07911 123456", None),
        call("globex", "globex-2", Outbound, "07911 123456", "00 33 6 12 34 56 78", None),
        call("initech", "initech-1", Outbound, "030 901820", "0151 23456789", None),
        call("initech", "initech-2", Outbound, "+49 30 901820", "06 12 34 56 78", Some("FR")),
        call("acme", "acme-1004", Inbound, "anonymous", "+1 415 555 2671", None),
        call("umbrella", "umbrella-1", Inbound, "+1 650 253 0000", "+1 415 555 2671", None),
    ];
    let mut out: Vec<(String, Vec<u8>)> = calls
        .iter()
        .map(|c| (c.tenant_id.clone(), codec::encode(c).expect("sample encodes")))
        .collect();
    out.push(("acme".into(), b"{\"call_id\": \"json-not-avro\"}".to_vec()));
    out
}

/// crm-sim with the dev accounts (deploy/crm-sim/seed.json, compiled in), on a free port.
fn start_crm_sim(dir: &std::path::Path) -> anyhow::Result<(String, Child)> {
    let seed = dir.join("crm-sim-seed.json");
    std::fs::write(&seed, include_str!("../../../deploy/crm-sim/seed.json"))?;
    crm_common::dev_broker::spawn_crm_sim(&sibling_binary("crm-sim")?, Some(&seed), false)
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let topics = Topics::default();
    let broker = DevBroker::start(1, args.partitions, &topics.all())?;
    let bootstrap = broker.bootstrap_servers();
    eprintln!("dev broker: KAFKA_BOOTSTRAP_SERVERS={bootstrap}");

    let dir = std::env::temp_dir().join(format!("crm-sync-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tenants = match &args.tenants_config {
        Some(p) => p.clone(),
        None => {
            let p = dir.join("tenants.toml");
            std::fs::write(&p, include_str!("../../../deploy/tenants.example.toml"))?;
            p
        }
    };
    let mut children = Children(vec![]);
    let (crm_sim_url, sim) = start_crm_sim(&dir)?;
    eprintln!("crm-sim (HubSpot, Salesforce, Zoho, Pipedrive; admin API at /admin): CRM_SIM_URL={crm_sim_url}");
    children.0.push(("crm-sim".into(), sim));
    for service in ["normaliser"] {
        let child = Command::new(sibling_binary(service)?)
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("TENANTS_CONFIG", &tenants)
            .env("KAFKA_OPTIONS", "session.timeout.ms=6000")
            .spawn()?;
        eprintln!("started {service} (pid {})", child.id());
        children.0.push((service.to_string(), child));
    }

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    let samples = sample_calls();
    for (key, payload) in &samples {
        producer
            .send(BaseRecord::to(&topics.calls_raw).key(key).payload(payload))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    eprintln!("produced {} sample calls to {}; waiting for the pipeline…", samples.len(), topics.calls_raw);

    let reader = TopicReader::new(&bootstrap, &[&topics.calls_normalised, &topics.dlq, &topics.audit])?;
    // Every input gets one result (normalised or DLQ) and one audit record.
    let seen = reader.read_until(Duration::from_secs(60), |m| m.len() >= 2 * samples.len());
    report(&seen, &topics, samples.len());

    if !args.once {
        eprintln!("\npipeline running; produce to {} at {bootstrap}. Ctrl-C to stop.", topics.calls_raw);
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
            crm_common::pipeline::shutdown_on_signals().cancelled().await;
        });
    }
    drop(children);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn report(seen: &[InMessage], topics: &Topics, expected: usize) {
    let mut lines = vec![];
    let mut audits = 0;
    for m in seen {
        let payload = m.payload.as_deref().unwrap_or_default();
        if m.topic == topics.calls_normalised {
            if let Ok(n) = codec::decode::<NormalisedCall>(payload) {
                lines.push(format!(
                    "  {:<9} {:<11} NORMALISED   {:<22} → {:<15} {:<22} → {:<15} (region {})",
                    n.tenant_id, n.call_id, format!("{:?}", n.from_raw), n.from_e164,
                    format!("{:?}", n.to_raw), n.to_e164, n.region_used
                ));
            }
        } else if m.topic == topics.dlq {
            if let Ok(d) = codec::decode::<DeadLetter>(payload) {
                lines.push(format!(
                    "  {:<9} {:<11} DLQ {:<21} {}",
                    d.tenant_id,
                    d.call_id.as_deref().unwrap_or("?"),
                    d.reason.as_str(),
                    d.detail
                ));
            }
        } else {
            audits += 1;
        }
    }
    lines.sort();
    println!("\nWhat happened to the {expected} sample calls:");
    for l in &lines {
        println!("{l}");
    }
    println!("  ({} of {expected} accounted for; {audits} audit records on {})", lines.len(), topics.audit);
}
