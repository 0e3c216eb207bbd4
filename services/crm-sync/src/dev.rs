//! `crm-sync dev`: the whole pipeline on one machine. Hosts the dev broker in this process,
//! starts every service built so far as child processes against it (with the machine's
//! Redis under a key prefix of this run's own, removed at exit), feeds sample calls from
//! several tenants with messy numbers, a repeat, an update and some bad input, and reports
//! what happened to each from the audit topic. Grows with every service.

use crm_common::audit_store;
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::{
    ActivityKind, AttendeeResponse, AuditOutcome, AuditRecord, CallDirection, CallEvent, CallOutcome, Crm, EmailDirection, EmailEvent,
    MeetingAttendee, MeetingEvent, MeetingStatus, NormalisedCall, NormalisedEmail, NormalisedMeeting, Stage,
};
use crm_common::redis_conn::{self, redact_url};
use crm_dev::{sibling_binary, DevBroker};

/// One line to stderr in one write. The services `crm-sync dev` starts share its stderr, and
/// `eprintln!` writes a formatted line piece by piece: a child's log line could land inside
/// ours (seen: crm-sim's "listening" between `CRM_SIM_URL=` and the URL).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = std::io::stderr().write_all(format!("{}\n", format_args!($($t)*)).as_bytes());
    }};
}

/// The CRMs whose writers `crm-sync dev` runs, one process each, as in deploy/.
const DEV_WRITERS: &[Crm] = &[Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive];
use crm_common::kafka::reader::TopicReader;
use crm_common::kafka::InMessage;
use crm_common::tenants::Tenants;
use rdkafka::producer::{BaseRecord, Producer};
use std::collections::{BTreeMap, HashMap};
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
    /// Redis for the deduper's marks and the writers' buckets and claims.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The PostgreSQL server for the audit store; the run makes a database of its own there
    /// and drops it at exit.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
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
                Ok(s) => say!("  {name} stopped ({s})"),
                Err(e) => say!("  {name}: {e}"),
            }
        }
    }
}

/// One sample input: its raw topic's kind, its key (the tenant) and its payload.
pub type Sample = (ActivityKind, String, Vec<u8>);

/// The sample calls, then acme's sample emails, meetings and leads (acme's HubSpot
/// connection takes all four kinds).
pub fn samples() -> Vec<Sample> {
    let mut out: Vec<Sample> = sample_calls().into_iter().map(|(k, p)| (ActivityKind::Call, k, p)).collect();
    out.extend(sample_emails_and_meetings());
    out.extend(sample_leads());
    out
}

/// acme's leads: Kim fills in the demo form (a new contact), and the form sends her lead
/// again with her job title (version 2: an update); the same Kim comes again from
/// LinkedIn's lead form as "Kimberly", her address in capitals (the same contact: her
/// name stays, the latest campaign moves); a badge scanned at an expo has only the number the front
/// desk and the lobby kiosk share (two contacts: held as AMBIGUOUS_MATCH, acme reviews
/// those).
fn sample_leads() -> Vec<Sample> {
    use crm_common::events::{ConsentState, LeadAttribution, LeadEvent, LeadSourceType};
    let now = crm_common::clock::now_ms();
    let lead = |id: &str, source: &str, version: i64, email: Option<&str>, phone: Option<&str>, first: &str, campaign: &str| LeadEvent {
        tenant_id: "acme".into(),
        lead_id: id.into(),
        source: source.into(),
        source_type: if source == "expo-scanner" { LeadSourceType::Event } else { LeadSourceType::Form },
        version,
        submitted_at: now - 600_000,
        email: email.map(Into::into),
        phone: phone.map(Into::into),
        first_name: Some(first.into()),
        last_name: Some("Park".into()),
        full_name: None,
        company: Some("Prospect Labs".into()),
        job_title: (version > 1).then(|| "Head of RevOps".into()),
        country: Some("United States".into()),
        consent_to_processing: ConsentState::Granted,
        consent: HashMap::from([("marketing_email".into(), "true".into())]),
        attribution: LeadAttribution {
            utm_source: Some(source.into()),
            utm_medium: Some("form".into()),
            utm_campaign: Some(campaign.into()),
            utm_term: None,
            utm_content: None,
            campaign_id: None,
            ad_id: None,
            form_id: Some("demo-request".into()),
            page_url: None,
        },
        answers: HashMap::new(),
        attributes: HashMap::new(),
    };
    [
        lead("dev-lead-1", "webform", 1, Some("kim@prospect.example"), Some("(415) 555-0142"), "Kim", "spring-demo"),
        lead("dev-lead-1", "webform", 2, Some("kim@prospect.example"), Some("(415) 555-0142"), "Kim", "spring-demo"),
        lead("dev-lead-2", "linkedin-lead-gen", 1, Some("KIM@Prospect.Example"), None, "Kimberly", "q3-abm"),
        lead("dev-lead-4", "expo-scanner", 1, None, Some("415 555 0199"), "Sam", "expo-booth"),
    ]
    .iter()
    .map(|l| (ActivityKind::Lead, l.tenant_id.clone(), codec::encode(l).expect("sample encodes")))
    .collect()
}

/// acme's rep Sam emails Ada (a contact, her address written in capitals) copying Grace
/// (another): one email on both contacts' timelines. The same email arrives again from
/// Grace's side of the sync (a repeat the deduper suppresses). A reply from an address no
/// contact has is logged without a contact. A meeting with Ada is booked, then cancelled:
/// one meeting, marked cancelled.
fn sample_emails_and_meetings() -> Vec<Sample> {
    let now = crm_common::clock::now_ms();
    let email = |id: &str, direction: EmailDirection, from: &str, to: &[&str], cc: &[&str], subject: &str| EmailEvent {
        tenant_id: "acme".into(),
        message_id: format!("<{id}@mail.acme-sales.example>"),
        source: "dev-mail".into(),
        version: 1,
        thread_id: Some("dev-thread-1".into()),
        in_reply_to: None,
        direction,
        from: from.into(),
        to: to.iter().map(|a| a.to_string()).collect(),
        cc: cc.iter().map(|a| a.to_string()).collect(),
        bcc: vec![],
        subject: Some(subject.into()),
        body_text: Some("dev sample".into()),
        sent_at: now - 1_800_000,
        time_zone: Some("America/New_York".into()),
        actor_id: "agent-7".into(),
        actor_email: "sam@acme-sales.example".into(),
        attributes: HashMap::new(),
    };
    use EmailDirection::*;
    let sam = "Sam Rep <sam@acme-sales.example>";
    let emails = [
        email("dev-email-1", Sent, sam, &["Ada Lovelace <ADA@Acme.Example>"], &["grace@acme.example"], "Your renewal"),
        email("dev-email-1", Sent, sam, &["Ada Lovelace <ada@acme.example>"], &["grace@acme.example"], "Your renewal"),
        email("dev-email-2", Received, "Lee <lee@elsewhere.example>", &[sam], &[], "Re: pricing"),
    ];
    let attendee =
        |address: &str| MeetingAttendee { address: address.into(), response: AttendeeResponse::Accepted, optional: false, phone: None };
    let meeting = |version: i64, status: MeetingStatus| MeetingEvent {
        tenant_id: "acme".into(),
        event_id: "dev-meeting-1".into(),
        ical_uid: Some("dev-meeting-1@calendar.acme-sales.example".into()),
        recurrence_id: None,
        source: "dev-calendar".into(),
        version,
        status,
        title: Some("Renewal review".into()),
        description_text: None,
        start_at: Some(now + 86_400_000),
        end_at: Some(now + 88_200_000),
        all_day: false,
        start_date: None,
        end_date: None,
        time_zone: Some("America/New_York".into()),
        location: Some("Dial-in: +1 650-253-0000".into()),
        conference_url: None,
        organizer: sam.into(),
        attendees: vec![attendee(sam), attendee("ada@acme.example")],
        actor_id: "agent-7".into(),
        actor_email: "sam@acme-sales.example".into(),
        attributes: HashMap::new(),
    };
    let mut out: Vec<Sample> =
        emails.iter().map(|e| (ActivityKind::Email, e.tenant_id.clone(), codec::encode(e).expect("sample encodes"))).collect();
    for m in [meeting(1, MeetingStatus::Confirmed), meeting(2, MeetingStatus::Cancelled)] {
        out.push((ActivityKind::Meeting, m.tenant_id.clone(), codec::encode(&m).expect("sample encodes")));
    }
    out
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
        // Calls of the last hour: older ones are looked up in the CRM before they are
        // created (the claim store may not remember them).
        started_at: crm_common::clock::now_ms() - 3_600_000,
        ended_at: Some(crm_common::clock::now_ms() - 3_475_000),
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
        // The PBX sends acme-1001 again (a repeat the deduper suppresses), then a second
        // version of acme-1002 once its recording is ready (an update that passes).
        call("acme", "acme-1001", Inbound, "650.253.0000", "+1 415 555 2671", None),
        CallEvent {
            version: 2,
            recording_url: Some("https://recordings.example/acme-1002.mp3".into()),
            ..call("acme", "acme-1002", Outbound, "(415) 555-2671", "+44 (0)20 7946 0958", None)
        },
    ];
    let mut out: Vec<(String, Vec<u8>)> = calls.iter().map(|c| (c.tenant_id.clone(), codec::encode(c).expect("sample encodes"))).collect();
    out.push(("acme".into(), b"{\"call_id\": \"json-not-avro\"}".to_vec()));
    out
}

/// The dev accounts' credentials (deploy/crm-sim/seed.json), under the secret names the
/// example tenants file gives. Dev only: real deployments mount real secrets.
const DEV_SECRETS: &[(&str, &str)] = &[
    ("ACME_HUBSPOT_TOKEN", "dev-acme-hubspot-token"),
    ("INITECH_HUBSPOT_TOKEN", "dev-initech-hubspot-token"),
    (
        "ACME_SALESFORCE_OAUTH",
        r#"{"client_id": "dev-acme-sf-client", "client_secret": "dev-acme-sf-secret", "refresh_token": "dev-acme-salesforce-refresh"}"#,
    ),
    (
        "GLOBEX_ZOHO_OAUTH",
        r#"{"client_id": "1000.DEVGLOBEX", "client_secret": "dev-globex-zoho-secret", "refresh_token": "1000.dev-globex-zoho-refresh"}"#,
    ),
    ("INITECH_PIPEDRIVE_TOKEN", "dev-initech-pipedrive-token"),
    // Seals the OAuth tokens the writers share in Redis.
    ("CRM_SYNC_TOKEN_KEY", crm_dev::DEV_TOKEN_KEY),
];

/// The example tenants with every CRM connection pointed at crm-sim.
fn dev_tenants(example: &str, crm_sim_url: &str) -> anyhow::Result<String> {
    let mut doc: toml::Table = toml::from_str(example)?;
    if let Some(tenants) = doc.get_mut("tenants").and_then(toml::Value::as_table_mut) {
        for (_, tenant) in tenants.iter_mut() {
            if let Some(crms) = tenant.get_mut("crms").and_then(toml::Value::as_table_mut) {
                for (crm, conn) in crms.iter_mut() {
                    if let Some(c) = conn.as_table_mut() {
                        c.entry("base_url").or_insert_with(|| toml::Value::String(format!("{crm_sim_url}/{crm}")));
                    }
                }
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

/// crm-sim with the dev accounts (deploy/crm-sim/seed.json, compiled in), on a free port.
fn start_crm_sim(dir: &std::path::Path) -> anyhow::Result<(String, Child)> {
    let seed = dir.join("crm-sim-seed.json");
    std::fs::write(&seed, include_str!("../../../deploy/crm-sim/seed.json"))?;
    crm_dev::spawn_crm_sim(&sibling_binary("crm-sim")?, Some(&seed), false)
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let topics = Topics::default();
    let broker = DevBroker::start(1, args.partitions, &topics.all())?;
    let bootstrap = broker.bootstrap_servers();
    say!("dev broker: KAFKA_BOOTSTRAP_SERVERS={bootstrap}");

    let dir = std::env::temp_dir().join(format!("crm-sync-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut children = Children(vec![]);
    let (crm_sim_url, sim) = start_crm_sim(&dir)?;
    say!("crm-sim (HubSpot, Salesforce, Zoho, Pipedrive; admin API at /admin): CRM_SIM_URL={crm_sim_url}");
    children.0.push(("crm-sim".into(), sim));
    let tenants = match &args.tenants_config {
        Some(p) => p.clone(),
        None => {
            let p = dir.join("tenants.toml");
            std::fs::write(&p, dev_tenants(include_str!("../../../deploy/tenants.example.toml"), &crm_sim_url)?)?;
            p
        }
    };
    let contracts = dir.join("contracts");
    std::fs::create_dir_all(&contracts)?;
    for (crm, text) in [
        ("hubspot", include_str!("../../../contracts/hubspot.toml")),
        ("hubspot.email", include_str!("../../../contracts/hubspot.email.toml")),
        ("hubspot.meeting", include_str!("../../../contracts/hubspot.meeting.toml")),
        ("hubspot.lead", include_str!("../../../contracts/hubspot.lead.toml")),
        ("salesforce", include_str!("../../../contracts/salesforce.toml")),
        ("salesforce.email", include_str!("../../../contracts/salesforce.email.toml")),
        ("salesforce.meeting", include_str!("../../../contracts/salesforce.meeting.toml")),
        ("salesforce.lead", include_str!("../../../contracts/salesforce.lead.toml")),
        ("zoho", include_str!("../../../contracts/zoho.toml")),
        ("zoho.email", include_str!("../../../contracts/zoho.email.toml")),
        ("zoho.meeting", include_str!("../../../contracts/zoho.meeting.toml")),
        ("pipedrive", include_str!("../../../contracts/pipedrive.toml")),
        ("pipedrive.email", include_str!("../../../contracts/pipedrive.email.toml")),
        ("pipedrive.meeting", include_str!("../../../contracts/pipedrive.meeting.toml")),
    ] {
        std::fs::write(contracts.join(format!("{crm}.toml")), text)?;
    }
    let tenants_loaded = Tenants::load(&tenants)?;
    let prefix = format!("crm-sync-dev-{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let marks = rt
        .block_on(redis_conn::connect_node(&args.redis_url))
        .map_err(|e| anyhow::anyhow!("Redis at {} is not answering ({e}); start it or set REDIS_URL", redact_url(&args.redis_url)))?;
    say!("Redis: REDIS_URL={} REDIS_KEY_PREFIX={prefix}", redact_url(&args.redis_url));
    // The run's prefix is a new claim store: nothing was written before it.
    crm_dev::fresh_claim_store(&args.redis_url, &prefix, &tenants)?;
    let db_name = format!("crm_sync_dev_{}", std::process::id());
    let database_url = rt
        .block_on(audit_store::create_database(&args.database_url, &db_name))
        .map_err(|e| anyhow::anyhow!("{e}; start PostgreSQL or set DATABASE_URL"))?;
    say!("PostgreSQL (audit store): DATABASE_URL={}", redact_url(&database_url));
    let mut services: Vec<(String, &str, Vec<&str>)> = vec![
        ("normaliser".into(), "normaliser", vec![]),
        ("deduper".into(), "deduper", vec![]),
        ("audit-sink".into(), "audit-sink", vec![]),
    ];
    for crm in DEV_WRITERS {
        services.push((format!("writer-{}", crm.as_str()), "writer", vec!["--crm", crm.as_str()]));
    }
    // A tenant onboarded while dev runs brings its credentials as a file here, as a mounted
    // Secret would (README "Tenants while running").
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    for (name, service, extra) in services {
        let child = Command::new(sibling_binary(service)?)
            .args(extra)
            .envs(DEV_SECRETS.iter().copied())
            .env("CRM_SYNC_SECRETS_DIR", &secrets)
            .env("TENANTS_RELOAD_INTERVAL", "1s")
            .env("CONTRACTS_DIR", &contracts)
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("TENANTS_CONFIG", &tenants)
            .env("REDIS_URL", &args.redis_url)
            .env("REDIS_KEY_PREFIX", &prefix)
            .env("DATABASE_URL", &database_url)
            .env("KAFKA_OPTIONS", "session.timeout.ms=6000")
            .spawn()?;
        say!("started {name} (pid {})", child.id());
        children.0.push((name.to_string(), child));
    }

    let kafka = crm_common::kafka::Kafka::local(&bootstrap);
    let producer = kafka.threaded_producer(&[])?;
    let samples = samples();
    for (kind, key, payload) in &samples {
        producer.send(BaseRecord::to(topics.raw(*kind)).key(key).payload(payload)).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    let per_kind = |k: ActivityKind| samples.iter().filter(|s| s.0 == k).count();
    say!(
        "produced {} sample calls to {}, {} emails to {}, {} meetings to {} and {} leads to {}; waiting for the pipeline…",
        per_kind(ActivityKind::Call),
        topics.calls_raw,
        per_kind(ActivityKind::Email),
        topics.raw(ActivityKind::Email),
        per_kind(ActivityKind::Meeting),
        topics.raw(ActivityKind::Meeting),
        per_kind(ActivityKind::Lead),
        topics.raw(ActivityKind::Lead)
    );

    let mut read: Vec<&str> = Topics::KINDS.iter().map(|&k| topics.normalised(k)).collect();
    read.push(&topics.audit);
    let reader = TopicReader::new(&kafka, &read)?;
    let audit = wait_for_audit(&reader, &topics, &tenants_loaded, samples.len());
    report(&audit, samples.len());
    // The audit store has it all too: a sample trace, as support would ask for it.
    match rt.block_on(sample_trace(&database_url, audit.len())) {
        Ok(text) => println!("\n{text}"),
        Err(e) => say!("no sample trace: {e}"),
    }

    if !args.once {
        say!(
            "\npipeline running; produce to {}, {}, {} or {} at {bootstrap}. Ctrl-C to stop.",
            topics.calls_raw,
            topics.raw(ActivityKind::Email),
            topics.raw(ActivityKind::Meeting),
            topics.raw(ActivityKind::Lead)
        );
        say!(
            "tenants: edit {} to add, change or remove tenants while it runs (every service applies it within a second); a new tenant's credentials go in {}/<credentials_secret>",
            tenants.display(),
            secrets.display()
        );
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
            crm_common::shutdown::on_signals().cancelled().await;
        });
    }
    drop(children);
    drop(broker);
    match rt.block_on(redis_conn::delete_prefix(&marks, &prefix)) {
        Ok(n) => say!("  removed this run's {n} Redis keys ({prefix}:*)"),
        Err(e) => say!("  could not remove Redis keys {prefix}:*: {e}"),
    }
    match rt.block_on(audit_store::drop_database(&args.database_url, &db_name)) {
        Ok(()) => say!("  dropped this run's audit database ({db_name})"),
        Err(e) => say!("  could not drop the audit database {db_name}: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `crm-sync trace` of the sample call that went furthest (an update written to two CRMs),
/// once the audit-sink has stored what the report read.
async fn sample_trace(database_url: &str, records: usize) -> anyhow::Result<String> {
    let store = audit_store::AuditStore::connect(database_url).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored: i64 = match store.client().query_one("SELECT count(*) FROM audit", &[]).await {
            Ok(r) => r.get(0),
            Err(_) => 0, // the sink has not made the schema yet
        };
        if stored as usize >= records || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let steps = store.trace("acme-1002", Some("acme")).await?;
    Ok(format!("Sample trace (crm-sync trace acme-1002 --tenant acme):\n{}", crate::trace::render("acme-1002", &steps)))
}

/// Reads the audit topic until every stage has accounted for every sample: the normaliser
/// audits each input once, and the deduper each normalised activity once per CRM of its
/// tenant that takes its kind (once when none). Gives up after a minute with what it has.
fn wait_for_audit(reader: &TopicReader, topics: &Topics, tenants: &Tenants, inputs: usize) -> Vec<AuditRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut audit: Vec<AuditRecord> = vec![];
    let mut normalised = 0usize;
    let mut dedup_expected = 0usize;
    loop {
        for m in reader.read_until(Duration::from_millis(500), |b: &[InMessage]| !b.is_empty() && b.len() >= 100) {
            let payload = m.payload.as_deref().unwrap_or_default();
            if let Some(kind) = topics.normalised_kind(&m.topic) {
                let tenant = match kind {
                    ActivityKind::Email => codec::decode::<NormalisedEmail>(payload).ok().map(|e| e.tenant_id),
                    ActivityKind::Meeting => codec::decode::<NormalisedMeeting>(payload).ok().map(|e| e.tenant_id),
                    ActivityKind::Lead => codec::decode::<crm_common::events::NormalisedLead>(payload).ok().map(|l| l.tenant_id),
                    ActivityKind::Call | ActivityKind::Unknown => codec::decode::<NormalisedCall>(payload).ok().map(|c| c.tenant_id),
                };
                if let Some(tenant) = tenant {
                    normalised += 1;
                    dedup_expected += tenants.get(&tenant).map_or(1, |t| t.crms_taking(kind).count().max(1));
                }
            } else if let Ok(a) = codec::decode::<AuditRecord>(payload) {
                audit.push(a);
            }
        }
        let count = |f: &dyn Fn(&AuditRecord) -> bool| audit.iter().filter(|a| f(a)).count();
        let normaliser = count(&|a| a.stage == Stage::Normaliser);
        let results = count(&|a| a.stage == Stage::Normaliser && a.outcome == AuditOutcome::Succeeded);
        let deduped = count(&|a| a.stage == Stage::Deduper);
        // The writers running in dev: each request the deduper emitted for their CRM ends
        // in one final "write" record.
        let to_write = count(&|a| {
            a.stage == Stage::Deduper && a.outcome == AuditOutcome::Succeeded && a.crm.is_some_and(|c| DEV_WRITERS.contains(&c))
        });
        let written = count(&|a| a.stage == Stage::Writer && a.operation == "write");
        let done = normaliser >= inputs && normalised >= results && deduped >= dedup_expected && written >= to_write;
        if done || std::time::Instant::now() >= deadline {
            return audit;
        }
    }
}

/// One block per sample input: its audit records, joined by trace id, stage by stage.
fn report(audit: &[AuditRecord], inputs: usize) {
    let mut by_trace: BTreeMap<&str, Vec<&AuditRecord>> = BTreeMap::new();
    for a in audit {
        by_trace.entry(a.trace_id.as_str()).or_default().push(a);
    }
    let mut blocks: Vec<(String, Vec<String>)> = by_trace
        .into_values()
        .map(|mut records| {
            records.sort_by_key(|a| (a.stage as u8, a.crm.map(|c| c.as_str()), a.occurred_at));
            let first = records[0];
            let id = first.call_id.as_deref().unwrap_or("?");
            let id = match first.kind {
                Some(k) if k != ActivityKind::Call && k != ActivityKind::Unknown => format!("{} {id}", k.as_str()),
                _ => id.to_string(),
            };
            let head = format!("{:<9} {:<11} v{}", first.tenant_id, id, first.version.map_or("?".to_string(), |v| v.to_string()));
            let lines = records
                .iter()
                .map(|a| {
                    let what = match (a.stage, a.outcome) {
                        (_, AuditOutcome::DeadLettered) => format!("DLQ {}", a.reason.as_deref().unwrap_or("?")),
                        (Stage::Normaliser, AuditOutcome::Succeeded) => "NORMALISED".to_string(),
                        (Stage::Deduper, AuditOutcome::Succeeded) => {
                            format!("DEDUPED {}", a.attributes.get("mark").map_or("", String::as_str))
                        }
                        (Stage::Writer, AuditOutcome::Succeeded) if a.operation == "write" => "WRITTEN".to_string(),
                        // One CRM call: its status and endpoint.
                        (Stage::Writer, o) if a.operation != "write" => format!(
                            "  {} {}",
                            a.crm_status.map_or("---".to_string(), |s| s.to_string()),
                            if o == AuditOutcome::Succeeded { "" } else { "(retried)" }
                        ),
                        (_, o) => format!("{o:?}").to_uppercase(),
                    };
                    let crm = a.crm.map_or("", |c| c.as_str());
                    let detail = if a.stage == Stage::Writer && a.operation != "write" {
                        format!("{} ({} ms)", a.operation, a.latency_ms.unwrap_or(0))
                    } else {
                        a.detail.clone()
                    };
                    format!("{what:<24} {crm:<10} {detail}")
                })
                .collect();
            (format!("{head} {}", first.occurred_at), lines)
        })
        .collect();
    blocks.sort();
    println!("\nWhat happened to the {inputs} sample inputs (from {} audit records):", audit.len());
    for (head, lines) in &blocks {
        let head = head.rsplit_once(' ').map_or(head.as_str(), |(h, _)| h);
        for (i, l) in lines.iter().enumerate() {
            if i == 0 {
                println!("  {head:<26} {l}");
            } else {
                println!("  {:<26} {l}", "");
            }
        }
    }
    println!("  ({} of {inputs} accounted for; {} audit records)", blocks.len(), audit.len());
}
