//! `cargo run --release -p bench -- normaliser|deduper`: one dev broker, one backlog on the
//! stage's input topic, then — one after the other, each in its own process and consumer
//! group — a plain consume→produce passthrough on the same pipeline runtime and the real
//! stage. Prints inputs/s for both, their ratio and each process's peak RSS. A second
//! anchor, the passthrough writing two messages per input, shows how much of a stage's
//! cost is the Kafka cost of its outputs (each stage writes its result and an audit record).
//! Figures, not assertions: the machines are noisy.

mod audit;
mod crm_sim;
mod deduper;
mod leads;
mod reconcile;
mod reliability;
mod tenants;
mod writer;

use clap::{Parser, Subcommand};
use crm_common::codec;
use crm_common::config::{CommonArgs, PipelineArgs, Topics};
use crm_common::events::{
    ActivityKind, AttendeeResponse, CallDirection, CallEvent, CallOutcome, Crm, CrmWriteRequest, CrmWriteRequestHead, CrmWriteRequestTail,
    EmailDirection, EmailEvent, MeetingAttendee, MeetingEvent, MeetingStatus, NormalisedCall, NormalisedCallView,
};
use crm_common::kafka::reader::TopicReader;
use crm_common::kafka::{InMessage, Kafka, OutRecord};
use crm_common::pipeline::{self, Handler, PipelineConfig, Processed, Transient};
use crm_dev::{sibling_binary, DevBroker};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const PASSTHROUGH_OUT: &str = "bench.passthrough.out";
/// The second anchor's outputs: two messages per input, as many as a stage writes.
pub(crate) const PASSTHROUGH_TWICE: [&str; 2] = ["bench.passthrough.twice.a", "bench.passthrough.twice.b"];
/// (internal) The topics the passthrough writes each input to, one message each, comma
/// separated; `PASSTHROUGH_OUT` when unset.
const PASSTHROUGH_TOPICS: &str = "BENCH_PASSTHROUGH_TOPICS";
/// The normaliser bench's second backlog (every customer number new) and its outputs.
const DISTINCT_RAW: &str = "bench.calls.distinct";
const DISTINCT_OUT: &str = "bench.normalised.distinct";
const DISTINCT_DLQ: &str = "bench.dlq.distinct";

#[derive(Parser)]
#[command(name = "bench", about = "crm-sync benchmarks (print figures)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Normaliser throughput beside a passthrough, and peak RSS, for one kind of activity.
    Normaliser {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        #[arg(long, default_value_t = 50)]
        tenants: usize,
        /// Which raw topic the backlog is on: calls, emails (a 2 KB body, three to five
        /// addresses with display names) or meetings (four attendees, a dial-in).
        #[arg(long, value_enum, default_value_t = Kind::Call)]
        kind: Kind,
    },
    /// Deduper throughput (Redis marks, fan-out, audit) beside a passthrough, and peak RSS.
    Deduper {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 24)]
        partitions: i32,
        #[arg(long, default_value_t = 200)]
        tenants: usize,
        /// Share of the backlog that repeats an earlier call, percent.
        #[arg(long, default_value_t = 10)]
        repeat_pct: usize,
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
    },
    /// The HubSpot writer against crm-sim: a limit-bound backlog (records/s, calls, 429s,
    /// budget utilisation), then calls.raw → HubSpot latency through the whole pipeline.
    Writer(writer::Args),
    Tenants(tenants::Args),
    /// A reconcile pass per CRM: records checked/s and API requests per 100 records, with
    /// drift to repair and at parity.
    Reconcile {
        /// CRMs (repeat or comma-separate); all four when absent.
        #[arg(long = "crm", value_delimiter = ',')]
        crms: Vec<Crm>,
        /// Calls written per CRM before the passes.
        #[arg(long, default_value_t = 1000)]
        records: usize,
        /// Share of them a person changes before the first pass, percent.
        #[arg(long, default_value_t = 10)]
        drift_pct: usize,
        #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        database_url: String,
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
    },
    /// The whole pipeline under faults: random SIGKILLs, a Redis restart, CRM throttles,
    /// 5xx and timeouts; checks one record per expected (call, CRM), the DLQ's reasons and
    /// the audit store, and prints the counts and throughput.
    Reliability(Box<reliability::Opts>),
    /// Per-input cost of the normaliser's steps and the deduper's call path (before and after reading in place), in-process (no broker).
    Steps {
        #[arg(long, default_value_t = 50_000)]
        iterations: usize,
    },
    /// The audit store at size: load `rows` audit rows, time `crm-sync trace` for random
    /// calls, and the audit-sink's insert rate from the broker.
    Audit {
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        #[arg(long, default_value_t = 200_000)]
        sink_records: usize,
        #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        database_url: String,
    },
    /// crm-sim's request rate and latency (single creates, batch upserts as the account fills,
    /// search, Salesforce collections) and its peak RSS.
    CrmSim {
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Records to upsert through HubSpot batch/upsert (and Salesforce collections).
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// (internal) The passthrough stage: calls.raw (or TOPIC_CALLS_RAW) →
    /// bench.passthrough.out (or each of BENCH_PASSTHROUGH_TOPICS), unchanged.
    Passthrough(Box<PassthroughArgs>),
}

#[derive(clap::Args)]
struct PassthroughArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

struct Passthrough {
    topics: Vec<String>,
}

impl Handler for Passthrough {
    async fn handle(&self, batch: &[InMessage]) -> Result<Vec<Processed>, Transient> {
        Ok(batch
            .iter()
            .map(|m| Processed {
                outputs: self
                    .topics
                    .iter()
                    .map(|t| OutRecord::new(t, &m.key_str().unwrap_or_default(), m.payload.clone().unwrap_or_default(), &m.trace_id))
                    .collect(),
                outcome: "passed",
            })
            .collect())
    }
}

/// The two anchors a stage is measured beside, over the backlog on `input`: the passthrough
/// (one message out per input) and the passthrough writing two (as many as the stage).
pub(crate) fn passthroughs(input: &str, env: impl Fn(&mut Command), bootstrap: &str, messages: usize) -> anyhow::Result<Vec<Run>> {
    let mut runs = vec![];
    for (label, topics) in [("passthrough", vec![PASSTHROUGH_OUT]), ("passthrough, 2 outputs each", PASSTHROUGH_TWICE.to_vec())] {
        let mut pt = Command::new(std::env::current_exe()?);
        pt.arg("passthrough").env("TOPIC_CALLS_RAW", input).env(PASSTHROUGH_TOPICS, topics.join(","));
        if topics.len() > 1 {
            pt.env("CONSUMER_GROUP", "bench-passthrough-twice");
        }
        env(&mut pt);
        runs.push(measure(label, pt.spawn()?, bootstrap, &topics[..1], messages)?);
    }
    Ok(runs)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Passthrough(args) => {
            let PassthroughArgs { common, pipeline } = *args;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let _t = crm_common::telemetry::init("bench-passthrough", &common)?;
                let cfg = PipelineConfig {
                    service: "bench-passthrough",
                    input_topics: vec![common.topics.calls_raw.clone()],
                    common,
                    args: pipeline,
                };
                let topics = std::env::var(PASSTHROUGH_TOPICS).unwrap_or_else(|_| PASSTHROUGH_OUT.into());
                let handler = Passthrough { topics: topics.split(',').map(str::to_string).collect() };
                pipeline::run(cfg, handler, crm_common::shutdown::on_signals()).await
            })
        }
        Cmd::Normaliser { messages, partitions, tenants, kind } => normaliser(messages, partitions, tenants, kind),
        Cmd::Writer(args) => writer::run(writer::profile(args.crm), &args),
        Cmd::Tenants(args) => tenants::run(&args),
        Cmd::Deduper { messages, partitions, tenants, repeat_pct, redis_url } => {
            deduper::run(messages, partitions, tenants, repeat_pct, &redis_url)
        }
        Cmd::Steps { iterations } => steps(iterations),
        Cmd::Reliability(opts) => reliability::run(*opts),
        Cmd::Reconcile { crms, records, drift_pct, database_url, redis_url } => {
            let crms = if crms.is_empty() { vec![Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive] } else { crms };
            reconcile::run(&crms, records, drift_pct, &database_url, &redis_url)
        }
        Cmd::CrmSim { requests, records, concurrency } => crm_sim::run(requests, records, concurrency),
        Cmd::Audit { rows, sink_records, database_url } => audit::run(rows, sink_records, &database_url),
    }
}

pub(crate) struct Run {
    pub label: &'static str,
    pub rate: f64,
    pub elapsed: Duration,
    pub peak_rss_kib: u64,
    /// The stage process's CPU (user + system) per input, in µs, from its first output to
    /// its last: what the stage costs, apart from how busy the machine was meanwhile.
    pub cpu_us_per_input: f64,
}

/// The kinds of activity a normaliser bench can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Call,
    Email,
    Meeting,
}

impl Kind {
    /// (raw topic, normalised topic)
    fn topics(self, t: &Topics) -> (&str, &str) {
        let kind = match self {
            Kind::Call => ActivityKind::Call,
            Kind::Email => ActivityKind::Email,
            Kind::Meeting => ActivityKind::Meeting,
        };
        (t.raw(kind), t.normalised(kind))
    }

    /// The i-th benchmark event: (key, Avro bytes).
    fn event(self, i: usize, tenants: usize) -> anyhow::Result<(String, Vec<u8>)> {
        Ok(match self {
            Kind::Call => {
                let ev = bench_call(i, tenants);
                (ev.tenant_id.clone(), codec::encode(&ev)?)
            }
            Kind::Email => {
                let ev = bench_email(i, tenants);
                (ev.tenant_id.clone(), codec::encode(&ev)?)
            }
            Kind::Meeting => {
                let ev = bench_meeting(i, tenants);
                (ev.tenant_id.clone(), codec::encode(&ev)?)
            }
        })
    }
}

fn normaliser(messages: usize, partitions: i32, tenants: usize, kind: Kind) -> anyhow::Result<()> {
    let topics = Topics::default();
    let mut all = topics.all();
    all.extend([PASSTHROUGH_OUT, PASSTHROUGH_TWICE[0], PASSTHROUGH_TWICE[1], DISTINCT_RAW, DISTINCT_OUT, DISTINCT_DLQ].map(String::from));
    let broker = DevBroker::start(1, partitions, &all)?;
    let bootstrap = broker.bootstrap_servers();
    let (raw_topic, out_topic) = kind.topics(&topics);

    let dir = std::env::temp_dir().join(format!("crm-sync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tenants_file = dir.join("tenants.toml");
    let cfg: String =
        (0..tenants).map(|t| format!("[tenants.t{t}]\ndefault_region = \"{}\"\n", BENCH_REGIONS[t % BENCH_REGIONS.len()])).collect();
    std::fs::write(&tenants_file, cfg)?;

    // The mock cluster keeps at most 5 MiB (or 100k messages) per partition and silently
    // drops the oldest beyond that, which would look like loss. Stay well inside it.
    let size = kind.event(0, tenants)?.1.len() + 100;
    let per_partition = (messages * size) as f64 / partitions as f64;
    anyhow::ensure!(
        per_partition < 4.0 * 1024.0 * 1024.0 && messages / partitions as usize <= 90_000,
        "{messages} {kind:?} messages of about {size} bytes over {partitions} partitions overflow the dev broker's \
         5 MiB per partition retention; use more --partitions or fewer --messages"
    );
    eprintln!(
        "producing {messages} {kind:?} events (about {size} bytes each) over {tenants} tenants to {raw_topic} ({partitions} partitions)…"
    );
    produce_all(&bootstrap, raw_topic, messages, |i| kind.event(i, tenants))?;

    let env = |cmd: &mut Command| {
        cmd.env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap).env("TENANTS_CONFIG", &tenants_file).env("RUST_LOG", "warn").stdout(Stdio::null());
    };
    let mut runs = passthroughs(raw_topic, env, &bootstrap, messages)?;
    let mut nm = Command::new(sibling_binary("normaliser")?);
    env(&mut nm);
    let label = if kind == Kind::Call { "normaliser, customers repeat" } else { "normaliser" };
    runs.push(measure(label, nm.spawn()?, &bootstrap, &[out_topic, &topics.dlq], messages)?);
    if kind == Kind::Call {
        // The same calls with every customer's number new: each is parsed, none cached.
        eprintln!("producing {messages} calls whose customer numbers are all distinct to {DISTINCT_RAW}…");
        produce_all(&bootstrap, DISTINCT_RAW, messages, |i| {
            let ev = bench_call_with(i, tenants, usize::MAX);
            Ok((ev.tenant_id.clone(), codec::encode(&ev)?))
        })?;
        let mut nm = Command::new(sibling_binary("normaliser")?);
        env(&mut nm);
        nm.env("TOPIC_CALLS_RAW", DISTINCT_RAW)
            .env("TOPIC_CALLS_NORMALISED", DISTINCT_OUT)
            .env("TOPIC_DLQ", DISTINCT_DLQ)
            .env("CONSUMER_GROUP", "bench-normaliser-distinct");
        runs.push(measure("normaliser, customers all new", nm.spawn()?, &bootstrap, &[DISTINCT_OUT, DISTINCT_DLQ], messages)?);
    }

    print_runs(
        &format!("bench normaliser --kind {kind:?}: {messages} messages of about {size} bytes, {partitions} partitions, {tenants} tenants, one dev broker"),
        &runs,
    );
    if kind == Kind::Call {
        println!(
            "(numbers: the agent's line, one per tenant, on every call; the customer's, valid in the tenant's region (US, GB, DE, FR, IN), \
             one of 10,000 per region, or every one new)"
        );
    }
    println!("(the normaliser also writes one audit record per input: 2 outputs per input vs 1)");
    if kind == Kind::Call {
        // Of the normaliser's CPU per call: naming its lookups (customer, agent id; keyed
        // hashes under the tenant's salt), measured alone on this thread.
        let lookups = crm_common::lookups::Lookups::new(b"0123456789abcdef0123456789abcdef");
        let calls: Vec<CallEvent> = (0..200_000).map(|i| bench_call_with(i, tenants, 10_000)).collect();
        let t = std::time::Instant::now();
        let bytes: usize = calls
            .iter()
            .map(|ev| {
                use crm_common::lookups::Lookup;
                lookups.attribute(&ev.tenant_id, [Lookup::Phone(&ev.from_number), Lookup::Agent(&ev.agent_id)]).len()
            })
            .sum();
        let per_call = t.elapsed().as_secs_f64() * 1e6 / calls.len() as f64;
        println!("(of which naming each call's lookups for trace --phone/--agent, 2 keyed hashes: {per_call:.2} µs per call on one thread, {} bytes of attribute)", bytes / calls.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One benchmark email: tenant `t{i % tenants}`, sent by one of the tenant's 20 users to a
/// customer (10,000 distinct, with display names), a colleague and a second customer in Cc,
/// with a 2 KB body. Real mail repeats the tenant's own addresses and rarely the customers'.
pub(crate) fn bench_email(i: usize, tenants: usize) -> EmailEvent {
    let t = i % tenants;
    let user = format!("user{}@tenant{t}.example", i % 20);
    let body = "Thanks for the call today. Here is the summary of what we agreed. ".repeat(31);
    EmailEvent {
        tenant_id: format!("t{t}"),
        message_id: format!("<bench-{i}.{t}@mail.tenant{t}.example>"),
        source: "bench".into(),
        version: 1,
        thread_id: Some(format!("thread-{}", i / 3)),
        in_reply_to: None,
        direction: if i.is_multiple_of(3) { EmailDirection::Received } else { EmailDirection::Sent },
        from: format!("User {} <{user}>", i % 20),
        to: vec![format!("\"Customer, {}\" <Customer.{}@Client{}.example>", i % 10_000, i % 10_000, i % 500)],
        cc: vec![format!("manager@tenant{t}.example"), format!("ops{}@client{}.example", i % 7, i % 500)],
        bcc: vec![],
        subject: Some(format!("Follow-up {i}")),
        body_text: Some(body),
        sent_at: crm_common::clock::now_ms() - 3_600_000 + i as i64,
        time_zone: Some("Europe/Paris".into()),
        actor_id: format!("u{}", i % 20),
        actor_email: user,
        attributes: HashMap::new(),
    }
}

/// One benchmark meeting: organised by one of the tenant's users with two customers and a
/// colleague, a dial-in in the location, 30 minutes; every tenth all-day.
pub(crate) fn bench_meeting(i: usize, tenants: usize) -> MeetingEvent {
    let t = i % tenants;
    let user = format!("user{}@tenant{t}.example", i % 20);
    let attendee = |address: String, response| MeetingAttendee { address, response, optional: false, phone: None };
    let start = crm_common::clock::now_ms() + i as i64 * 60_000;
    let all_day = i.is_multiple_of(10);
    MeetingEvent {
        tenant_id: format!("t{t}"),
        event_id: format!("ev{i}"),
        ical_uid: Some(format!("ev{i}@google.com")),
        recurrence_id: None,
        source: "bench".into(),
        version: 1,
        status: MeetingStatus::Confirmed,
        title: Some(format!("Review {i}")),
        description_text: Some("Agenda: pricing, rollout, next steps.".into()),
        start_at: (!all_day).then_some(start),
        end_at: (!all_day).then_some(start + 1_800_000),
        all_day,
        start_date: all_day.then(|| "2026-12-07".to_string()),
        end_date: all_day.then(|| "2026-12-08".to_string()),
        time_zone: Some("America/New_York".into()),
        location: Some("Dial-in: +1 650-253-0000, PIN 1234".into()),
        conference_url: Some("https://meet.example/abc".into()),
        organizer: user.clone(),
        attendees: vec![
            attendee(user.clone(), AttendeeResponse::Accepted),
            attendee(format!("Customer {} <customer.{}@client{}.example>", i % 10_000, i % 10_000, i % 500), AttendeeResponse::Accepted),
            attendee(format!("ops{}@client{}.example", i % 7, i % 500), AttendeeResponse::NeedsAction),
            attendee(format!("manager@tenant{t}.example"), AttendeeResponse::Tentative),
        ],
        actor_id: format!("u{}", i % 20),
        actor_email: user,
        attributes: HashMap::new(),
    }
}

/// The figures table: inputs/s, seconds and peak RSS per run, then each stage's rate and CPU
/// per input against each anchor (the runs `passthroughs` made, first in `runs`).
pub(crate) fn print_runs(title: &str, runs: &[Run]) {
    println!("\n{title}");
    println!("{:<32} {:>12} {:>10} {:>14} {:>16}", "stage", "inputs/s", "seconds", "peak RSS MiB", "CPU µs/input");
    for r in runs {
        println!(
            "{:<32} {:>12.0} {:>10.2} {:>14.1} {:>16.1}",
            r.label,
            r.rate,
            r.elapsed.as_secs_f64(),
            r.peak_rss_kib as f64 / 1024.0,
            r.cpu_us_per_input
        );
    }
    let (anchors, stages): (Vec<&Run>, Vec<&Run>) = runs.iter().partition(|r| r.label.starts_with("passthrough"));
    for r in stages {
        for a in &anchors {
            println!(
                "ratio {}/{}: {:.2} (CPU per input: {:.2})",
                r.label,
                a.label,
                r.rate / a.rate,
                r.cpu_us_per_input / a.cpu_us_per_input.max(f64::MIN_POSITIVE)
            );
        }
    }
}

/// The regions of benchmark tenants: tenant `t{n}` reads national numbers in
/// `BENCH_REGIONS[n % 5]`.
pub(crate) const BENCH_REGIONS: [&str; 5] = ["US", "GB", "DE", "FR", "IN"];

/// One benchmark call: tenant `t{i % tenants}`, id `call-{i}`, with the number shapes the
/// normaliser meets in practice, each valid in the tenant's region: the agent's line (one
/// per tenant, on every call) and a customer's number, one of 10,000 per region.
pub(crate) fn bench_call(i: usize, tenants: usize) -> CallEvent {
    bench_call_with(i, tenants, 10_000)
}

/// As `bench_call`, with the customers' numbers drawn from `customers` per region (the
/// input's call number `i` picks one: `customers` ≥ the number of calls makes every
/// customer number new).
pub(crate) fn bench_call_with(i: usize, tenants: usize, customers: usize) -> CallEvent {
    let agents = ["(415) 555-2671", "+44 20 7946 0958", "030 901820", "06 12 34 56 78", "098765 43210"];
    let t = i % tenants;
    CallEvent {
        tenant_id: format!("t{t}"),
        call_id: format!("call-{i}"),
        source: "bench".into(),
        version: 1,
        direction: if i.is_multiple_of(2) { CallDirection::Inbound } else { CallDirection::Outbound },
        // The agent's line repeats; customers' numbers much less.
        from_number: agents[t % agents.len()].into(),
        to_number: customer_number(BENCH_REGIONS[t % BENCH_REGIONS.len()], i % customers.max(1)),
        region_hint: None,
        // Recent calls, as live traffic is (older ones are looked up before they are created).
        started_at: crm_common::clock::now_ms() - 3_600_000 + i as i64,
        ended_at: Some(crm_common::clock::now_ms() - 3_540_000 + i as i64),
        duration_s: Some(60),
        outcome: Some(CallOutcome::Answered),
        agent_id: format!("agent-{}", i % 97),
        agent_email: Some("agent@example.com".into()),
        recording_url: None,
        notes: Some("benchmark call".into()),
        attributes: HashMap::from([("queue".into(), "sales".into())]),
    }
}

/// Customer `n`'s number (up to a million per region), written nationally as people do;
/// every one valid in `region` by libphonenumber (checked with its Python port).
pub(crate) fn customer_number(region: &str, n: usize) -> String {
    let (a, b) = ((n / 10_000) % 100, n % 10_000);
    match region {
        "GB" => format!("020 7{:03} {b:04}", a + 100),
        "DE" => format!("030 12{a:02} {b:04}"),
        "FR" => format!("06 12 {a:02} {:02} {:02}", b / 100, b % 100),
        "IN" => format!("098{:03} {b:05}", a + 100),
        _ => format!("(650) 2{a:02}-{b:04}"),
    }
}

/// Produces `n` messages made by `make(i)` (key, payload) and waits for them all.
pub(crate) fn produce_all(
    bootstrap: &str,
    topic: &str,
    n: usize,
    make: impl Fn(usize) -> anyhow::Result<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    Source::new(bootstrap)?.produce_all(topic, n, make)
}

/// The bench's own producer, kept across sends where a latency is timed from the send. A
/// new (idempotent) producer's first messages mostly reached the broker about half a
/// second after they were sent: `bench tenants`' quiet tenants, sent by a producer of their
/// own, were written 523–541 ms after in five runs and 44–51 ms in two; sent by the burst's
/// producer, 116–129 ms in two of two. That was the bench's producer, not the pipeline.
pub(crate) struct Source {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Source {
    pub(crate) fn new(bootstrap: &str) -> anyhow::Result<Source> {
        let producer = Kafka::local(bootstrap).threaded_producer(&[("linger.ms", "20"), ("queue.buffering.max.messages", "1000000")])?;
        Ok(Source { producer })
    }

    /// As [`produce_all`], on this producer.
    pub(crate) fn produce_all(
        &self,
        topic: &str,
        n: usize,
        make: impl Fn(usize) -> anyhow::Result<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        // Connected before the first message is made.
        self.producer.client().fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for i in 0..n {
            let (key, payload) = make(i)?;
            send_waiting(&self.producer, BaseRecord::to(topic).key(&key).payload(&payload));
        }
        self.producer.flush(Duration::from_secs(120))?;
        Ok(())
    }
}

/// Sends `rec`, waiting while the producer's queue is full.
pub(crate) fn send_waiting(producer: &ThreadedProducer<DefaultProducerContext>, mut rec: BaseRecord<'_, String, Vec<u8>>) {
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

/// Reads `child`'s outputs until all `expected` are there; the rate comes from the outputs'
/// own timestamps (first to last), so consumer-group join time and our polling do not count.
/// Then reads its peak RSS and stops it.
pub(crate) fn measure(label: &'static str, mut child: Child, bootstrap: &str, outputs: &[&str], expected: usize) -> anyhow::Result<Run> {
    let reader = TopicReader::new(&Kafka::local(bootstrap), outputs)?;
    let (mut n, mut first, mut last) = (0usize, i64::MAX, i64::MIN);
    let deadline = Instant::now() + Duration::from_secs(600);
    // (outputs seen, CPU seconds) once the first outputs are in: startup is not counted.
    let mut cpu_from = None;
    while n < expected {
        anyhow::ensure!(Instant::now() < deadline, "{label}: only {n} of {expected} outputs");
        for m in reader.read_until(Duration::from_millis(500), |b| b.len() >= 10_000) {
            n += 1;
            let ts = m.timestamp_ms.unwrap_or(0);
            first = first.min(ts);
            last = last.max(ts);
        }
        if cpu_from.is_none() && n > 0 {
            cpu_from = Some((n, cpu_seconds(child.id())));
        }
    }
    let cpu_us_per_input = cpu_from.map_or(0.0, |(n0, cpu0)| (cpu_seconds(child.id()) - cpu0) * 1e6 / (n - n0).max(1) as f64);
    let peak_rss_kib = peak_rss_kib(child.id()).unwrap_or(0);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let elapsed = Duration::from_millis((last - first).max(1) as u64);
    let rate = n as f64 / elapsed.as_secs_f64();
    eprintln!("{label}: {rate:.0} msgs/s");
    Ok(Run { label, rate, elapsed, peak_rss_kib, cpu_us_per_input })
}

/// A process's CPU time so far (user + system), in seconds; 0 if it is gone.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    // /proc/PID/stat: utime and stime are fields 14 and 15, after the ')' that ends the
    // command name.
    let ticks: u64 = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum())
        })
        .unwrap_or(0);
    // SAFETY: sysconf is thread-safe and has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn steps(iterations: usize) -> anyhow::Result<()> {
    let ev = CallEvent {
        tenant_id: "t1".into(),
        call_id: "call-1".into(),
        source: "bench".into(),
        version: 1,
        direction: CallDirection::Inbound,
        from_number: "(415) 555-2671".into(),
        to_number: "+1 650 253 0000".into(),
        region_hint: None,
        started_at: 1,
        ended_at: Some(2),
        duration_s: Some(60),
        outcome: Some(CallOutcome::Answered),
        agent_id: "a".into(),
        agent_email: Some("agent@example.com".into()),
        recording_url: None,
        notes: Some("benchmark call".into()),
        attributes: HashMap::from([("queue".into(), "sales".into())]),
    };
    let bytes = codec::encode(&ev)?;
    let region = crm_common::phone::region("US")?;
    let time = |label: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..iterations {
            f();
        }
        let per = t.elapsed().as_secs_f64() / iterations as f64;
        println!("{label:<48} {:>9.2} µs  {:>10.0} /s", per * 1e6, 1.0 / per);
    };
    time("codec::encode CallEvent", &mut || {
        codec::encode(&ev).unwrap();
    });
    time("codec::decode CallEvent", &mut || {
        codec::decode::<CallEvent>(&bytes).unwrap();
    });
    time("phone::to_e164 national", &mut || {
        crm_common::phone::to_e164("(415) 555-2671", Some(region)).unwrap();
    });
    time("phone::to_e164 +CC", &mut || {
        crm_common::phone::to_e164("+1 650 253 0000", Some(region)).unwrap();
    });
    // Customers' numbers of the normaliser bench's five regions in turn: the phonenumber
    // crate keeps its compiled patterns in one LRU of 100 behind one lock, which five
    // regions' patterns overflow.
    let regions: Vec<_> = BENCH_REGIONS.iter().map(|r| crm_common::phone::region(r)).collect::<Result<_, _>>()?;
    let mut n = 0;
    let patterns = phonenumber::metadata::DATABASE.cache();
    for (label, capacity) in [("5 regions, crate's 100 patterns", 100), ("5 regions, ours", crm_common::phone::PATTERN_CACHE)] {
        patterns.lock().expect("lock").set_capacity(capacity);
        time(&format!("phone::to_e164, {label}"), &mut || {
            n += 1;
            let r = n % regions.len();
            crm_common::phone::to_e164(&customer_number(BENCH_REGIONS[r], n), Some(regions[r])).unwrap();
        });
    }
    let cache = crm_common::phone::E164Cache::new(1000);
    time("E164Cache hit", &mut || {
        cache.to_e164("(415) 555-2671", Some(region)).unwrap();
    });

    // The deduper's call, read and written into one CRM's write request: decoded into an
    // owned call and encoded again (before), or read in place and written around its bytes.
    let mut call = crm_common::events::fixtures::normalised_call(&ev.tenant_id, &ev.call_id, 1);
    (call.notes, call.agent_email, call.attributes) = (ev.notes.clone(), ev.agent_email.clone(), ev.attributes.clone());
    let normalised = codec::encode(&call)?;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    time("deduper call → request, decoded + encoded", &mut || {
        let call: NormalisedCall = codec::decode(&normalised).unwrap();
        let key = crm_common::events::idempotency_key(&call.tenant_id, &call.call_id, Crm::Hubspot);
        let req = CrmWriteRequest {
            tenant_id: call.tenant_id.clone(),
            call_id: call.call_id.clone(),
            crm: Crm::Hubspot,
            idempotency_key: key,
            version: call.version,
            call,
            requested_at: 4,
            trace_id: trace.into(),
        };
        codec::encode(&req).unwrap();
    });
    time("deduper call → request, read in place + around", &mut || {
        let datum = codec::current_datum::<NormalisedCall>(&normalised).unwrap();
        let view: NormalisedCallView = codec::decode_view::<NormalisedCall, _>(datum).unwrap();
        let key = crm_common::events::idempotency_key(view.tenant_id, view.call_id, Crm::Hubspot);
        let head = CrmWriteRequestHead {
            tenant_id: view.tenant_id,
            call_id: view.call_id,
            crm: Crm::Hubspot,
            idempotency_key: &key,
            version: view.version,
        };
        let tail = CrmWriteRequestTail { requested_at: 4, trace_id: trace };
        codec::encode_around(&crm_common::events::CALL_IN_WRITE_REQUEST, &head, datum, &tail).unwrap();
    });
    Ok(())
}
