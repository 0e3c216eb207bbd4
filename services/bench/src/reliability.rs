//! `bench reliability`: the proof under faults (DESIGN §4–§6, §9).
//!
//! The whole pipeline, each service its own process (normaliser, deduper, the four writers,
//! the audit-sink), against a real Kafka-protocol broker (librdkafka's mock cluster, or
//! tansu), a redis-server and a PostgreSQL database of the run's own, and crm-sim, while:
//! - a random service is SIGKILLed and started again every few seconds;
//! - every writer runs as two replicas (or `--replicas`) in one consumer group, so kills and
//!   stops move live partitions between them;
//! - a random writer is stopped (SIGSTOP) for longer than its session timeout and its lease,
//!   then resumed (a zombie: its partitions and claims moved on meanwhile), every so often;
//! - Redis is SIGKILLed and started again once from its append-only file, and once more later
//!   with its data gone (a restart without persistence);
//! - crm-sim answers a share of requests with throttles, 5xx and timeouts, some of them
//!   after applying the write, and applies some creates after the writer gave up (late
//!   writes: the answers that make blind retries duplicate); Salesforce and Zoho tenants
//!   use OAuth, and their token endpoints answer 503s, throttles and timeouts.
//!
//! The input is what upstream systems send: mostly good calls, some sent twice, some
//! updated later, some with numbers that are not numbers, some for a tenant nobody
//! configured; a few tenants are set up to fail for good at one CRM (a revoked write
//! permission, a wrong token). Every `--activities-every`-th tenant also syncs emails (some
//! sent twice) and meetings (some moved, some then cancelled) to each of its CRMs, on their
//! own raw topics, mixed in with its calls. At the end it checks that crm-sim holds exactly one record
//! per expected (call, CRM), that every permanent failure is in the DLQ with its reason and
//! nothing else is, and that the audit store has a write for every record. It prints the
//! counts and the run's throughput, and exits non-zero when a check fails (keeping the
//! services' logs).

use crate::writer::{profile, Profile, Sim};
use crm_common::audit_store;
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::*;
use crm_common::kafka::Kafka;
use crm_dev::{create_topics, sibling_binary, spawn_crm_sim, DevBroker, DevRedis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CRMS: [Crm; 4] = [Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive];
const GHOST: &str = "ghost";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// librdkafka's mock cluster, in this process.
    Mock,
    /// `tansu` on PATH (`cargo install tansu --locked --features libsql`), on its SQLite
    /// storage engine (its memory engine loses records fetched from inside a batch).
    Tansu,
}

#[derive(clap::Args, Clone)]
pub struct Opts {
    #[arg(long, value_enum, default_value = "mock")]
    pub broker: BrokerKind,
    /// Calls (distinct call ids); repeats and updates come on top.
    #[arg(long, default_value_t = 100_000)]
    pub calls: usize,
    #[arg(long, default_value_t = 200)]
    pub tenants: usize,
    /// Calls produced per second to calls.raw.
    #[arg(long, default_value_t = 1000)]
    pub rate: usize,
    /// A random service is SIGKILLed every `kill_every_min`..`kill_every_max` seconds.
    #[arg(long, default_value_t = 3.0)]
    pub kill_every_min: f64,
    #[arg(long, default_value_t = 5.0)]
    pub kill_every_max: f64,
    /// Seconds a killed service stays down before it starts again.
    #[arg(long, default_value_t = 0.0)]
    pub restart_after_s: f64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 24)]
    pub partitions: i32,
    /// Share of CRM requests crm-sim answers with an injected fault, percent (split between
    /// throttles, 5xx before and after the write, and timeouts before and after it).
    #[arg(long, default_value_t = 5.0)]
    pub fault_pct: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give up when no outcome arrives for this long once the faults stop.
    #[arg(long, default_value_t = 180)]
    pub stall_s: u64,
    /// Replicas of each writer, in one consumer group.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// A random writer is stopped (SIGSTOP) every `zombie_every_min`..`zombie_every_max`
    /// seconds for `zombie_s` (longer than its 6 s session timeout and 10 s lease), then
    /// resumed; 0 turns zombies off.
    #[arg(long, default_value_t = 12.0)]
    pub zombie_every_min: f64,
    #[arg(long, default_value_t = 20.0)]
    pub zombie_every_max: f64,
    #[arg(long, default_value_t = 14.0)]
    pub zombie_s: f64,
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Every this-many-th tenant (of those that fail at no CRM) syncs emails and meetings
    /// too; 0: calls only.
    #[arg(long, default_value_t = 4)]
    pub activities_every: usize,
}

/// What must become of one (tenant, call, CRM): a record, or a dead letter with this
/// reason. CRM "" is a call that fails before any CRM (in the normaliser).
type Outcome = (String, String, String);

struct Plan {
    /// (topic, key, Avro CallEvent / EmailEvent / MeetingEvent) in produce order.
    messages: Vec<(String, String, Vec<u8>)>,
    /// Idempotency keys that must end as exactly one record each.
    records: HashSet<String>,
    /// (tenant, call, crm) → the reason it must be dead-lettered with.
    dead: HashMap<Outcome, DlqReason>,
    repeats: usize,
    /// Emails and meetings (distinct), and meeting versions after the first.
    emails: usize,
    meetings: usize,
    /// Dead letters the input makes when nothing crashes: one per failing input, so a
    /// repeat of a call that fails in the normaliser fails again, a repeat the deduper
    /// drops does not, and an update of a call that fails at a CRM fails again there.
    dead_rows: usize,
    updates: usize,
    /// Leads (distinct lead ids), and the people they name: (tenant, CRM, email), each of
    /// which must end as exactly one person in that CRM.
    leads: usize,
    people: HashSet<(String, Crm, String)>,
}

struct Tenant {
    name: String,
    crms: Vec<Crm>,
    /// The CRM whose write permission crm-sim revokes for this tenant.
    revoked: Option<Crm>,
    /// The CRM whose token in the secret is wrong.
    bad_token: Option<Crm>,
    /// Syncs emails and meetings too (`activities = ["call", "email", "meeting"]`), and
    /// leads where every CRM of its writes them.
    activities: bool,
}

impl Tenant {
    fn leads(&self) -> bool {
        self.activities && self.crms.iter().all(|c| crm_common::tenants::LEAD_CRMS.contains(c))
    }
}

/// Whether an idempotency key is a lead's (a person in the CRM carries no key of ours).
fn is_lead(key: &str) -> bool {
    key.contains(":lead:")
}

/// The people leads name, per tenant: few, so that most leads update a person another lead
/// made (two sources, a retry after a kill, a replay).
const LEAD_PEOPLE: usize = 2;

/// A lead for one of the tenant's people, from one of two sources, without a phone (the
/// seeded contact's number would match it).
fn lead(tenant: &str, i: usize, now: i64) -> LeadEvent {
    let mut l = fixtures::raw_lead(tenant, &format!("rl{i}"), 0);
    l.source = if i.is_multiple_of(2) { "webform".into() } else { "linkedin-lead-gen".into() };
    l.email = Some(format!("person{}@prospect.example", i % LEAD_PEOPLE));
    l.phone = None;
    l.submitted_at = now - 60_000;
    l.attribution.utm_campaign = Some(format!("c{i}"));
    l
}

/// Tenant i uses CRM i % 4, and every third tenant a second one; four tenants (one per CRM)
/// lose their write permission and one has a wrong token; every `activities_every`-th of
/// the others syncs emails and meetings too.
fn tenants(n: usize, activities_every: usize) -> Vec<Tenant> {
    let revoked: HashMap<usize, Crm> = (0..4).map(|k| ((k * n / 4) / 4 * 4 + k + 4, CRMS[k])).collect();
    (0..n)
        .map(|i| {
            let mut crms = vec![CRMS[i % 4]];
            if i % 3 == 0 {
                crms.push(CRMS[(i + 1) % 4]);
            }
            let (revoked, bad_token) = (revoked.get(&i).copied(), (i == n / 2 + 2).then(|| crms[0]));
            // Runs of four tenants (one per CRM) at a time, so every CRM gets them.
            let activities = activities_every > 0 && (i / 4) % activities_every == 1 && revoked.is_none() && bad_token.is_none();
            Tenant { name: format!("t{i}"), revoked, bad_token, crms, activities }
        })
        .collect()
}

/// The rep every email and meeting comes from, and the customer they are with (a contact
/// in each of the tenant's CRMs).
const REP: &str = "Rep <rep@seller.example>";
const CUSTOMER_EMAIL: &str = crate::writer::PARTICIPANT;

/// An email the rep sent the customer an hour ago (the claim store remembers it).
fn email(tenant: &str, i: usize, now: i64) -> EmailEvent {
    EmailEvent {
        tenant_id: tenant.into(),
        message_id: format!("<re{i}@mail.seller.example>"),
        source: "reliability-mail".into(),
        version: 1,
        thread_id: Some(format!("thread-{i}")),
        in_reply_to: None,
        direction: EmailDirection::Sent,
        from: REP.into(),
        to: vec![format!("Jane Doe <{CUSTOMER_EMAIL}>")],
        cc: vec![],
        bcc: vec![],
        subject: Some(format!("Follow-up {i}")),
        body_text: Some(format!("email {i} ✓")),
        sent_at: now - 3_600_000 + i as i64,
        time_zone: Some("America/New_York".into()),
        actor_id: "rep-1".into(),
        actor_email: "rep@seller.example".into(),
        attributes: HashMap::new(),
    }
}

/// A meeting with the customer tomorrow, at `version` (2: moved an hour; 3: cancelled).
fn meeting(tenant: &str, i: usize, version: i64, now: i64) -> MeetingEvent {
    let start = now + 86_400_000 + if version >= 2 { 3_600_000 } else { 0 };
    let attendee = |a: &str| MeetingAttendee { address: a.into(), response: AttendeeResponse::Accepted, optional: false, phone: None };
    MeetingEvent {
        tenant_id: tenant.into(),
        event_id: format!("rm{i}"),
        ical_uid: Some(format!("rm{i}@cal.seller.example")),
        recurrence_id: None,
        source: "reliability-calendar".into(),
        version,
        status: if version >= 3 { MeetingStatus::Cancelled } else { MeetingStatus::Confirmed },
        title: Some(format!("Review {i}")),
        description_text: None,
        start_at: Some(start),
        end_at: Some(start + 1_800_000),
        all_day: false,
        start_date: None,
        end_date: None,
        time_zone: Some("America/New_York".into()),
        location: Some("Room 4".into()),
        conference_url: None,
        organizer: REP.into(),
        attendees: vec![attendee(REP), attendee(CUSTOMER_EMAIL)],
        actor_id: "rep-1".into(),
        actor_email: "rep@seller.example".into(),
        attributes: HashMap::new(),
    }
}

fn call(tenant: &str, i: usize, version: i64) -> CallEvent {
    // Three customers per tenant: the seeded contact, and two nobody knows yet.
    let customer = match i % 3 {
        0 => "(415) 555-2671".to_string(),
        k => format!("(650) 253-00{k:02}"),
    };
    let agent = "+1 212 736 5000".to_string();
    let inbound = i.is_multiple_of(2);
    let (from_number, to_number) = if inbound { (customer, agent) } else { (agent, customer) };
    CallEvent {
        tenant_id: tenant.into(),
        call_id: format!("r{i}"),
        version,
        direction: if inbound { CallDirection::Inbound } else { CallDirection::Outbound },
        from_number,
        to_number,
        notes: Some(if version > 1 { format!("call {i}, notes edited") } else { format!("call {i} ✓") }),
        ..crate::bench_call(i, 1)
    }
}

fn plan(tenants: &[Tenant], calls: usize, topics: &Topics) -> anyhow::Result<Plan> {
    let mut p = Plan {
        messages: vec![],
        records: HashSet::new(),
        dead: HashMap::new(),
        repeats: 0,
        updates: 0,
        dead_rows: 0,
        emails: 0,
        meetings: 0,
        leads: 0,
        people: HashSet::new(),
    };
    let now = crm_common::clock::now_ms();
    let (calls_raw, emails_raw, meetings_raw) =
        (topics.calls_raw.clone(), topics.raw(ActivityKind::Email).to_string(), topics.raw(ActivityKind::Meeting).to_string());
    let leads_raw = topics.raw(ActivityKind::Lead).to_string();
    // Repeats and updates arrive a little later than the call they repeat or update.
    let mut later: BTreeMap<usize, Vec<(String, String, Vec<u8>)>> = BTreeMap::new();
    for i in 0..calls {
        let t = &tenants[i % tenants.len()];
        let id = format!("r{i}");
        let mut ev = call(&t.name, i, 1);
        if i % 97 == 13 {
            ev.from_number = "555".into();
            ev.to_number = "not a number".into();
            p.dead.insert((t.name.clone(), id, String::new()), DlqReason::InvalidPhone);
            p.dead_rows += if i % 20 == 7 { 2 } else { 1 };
        } else if i % 211 == 5 {
            ev.tenant_id = GHOST.into();
            p.dead.insert((GHOST.into(), id, String::new()), DlqReason::TenantNotConfigured);
            p.dead_rows += if i % 20 == 7 { 2 } else { 1 };
        } else {
            let failing = t.crms.iter().filter(|&&c| t.revoked == Some(c) || t.bad_token == Some(c)).count();
            p.dead_rows += if i % 50 == 11 { 2 * failing } else { failing };
            for &crm in &t.crms {
                if t.revoked == Some(crm) {
                    p.dead.insert((t.name.clone(), id.clone(), crm.as_str().into()), DlqReason::PermissionDenied);
                } else if t.bad_token == Some(crm) {
                    p.dead.insert((t.name.clone(), id.clone(), crm.as_str().into()), DlqReason::AuthFailed);
                } else {
                    p.records.insert(idempotency_key(&t.name, &id, crm));
                }
            }
            if i % 50 == 11 {
                let v2 = call(&t.name, i, 2);
                later.entry(i + 100).or_default().push((calls_raw.clone(), t.name.clone(), codec::encode(&v2)?));
                p.updates += 1;
            }
            // Its emails and meetings, beside the calls: by round (each round gives every
            // tenant one call), an email in every fourth, a meeting in every fourth other.
            let round = i / tenants.len();
            if t.activities && round % 4 == 1 {
                let e = email(&t.name, i, now);
                let mid = format!("re{i}@mail.seller.example");
                for &crm in &t.crms {
                    p.records.insert(activity_key(&t.name, ActivityKind::Email, &mid, crm));
                }
                let msg = (emails_raw.clone(), t.name.clone(), codec::encode(&e)?);
                if round % 8 == 5 {
                    // The same email from a second mailbox's sync.
                    later.entry(i + 30).or_default().push(msg.clone());
                    p.repeats += 1;
                }
                p.messages.push(msg);
                p.emails += 1;
            } else if t.leads() && round % 4 == 2 {
                let l = lead(&t.name, i, now);
                for &crm in &t.crms {
                    p.records.insert(activity_key(&t.name, ActivityKind::Lead, &l.lead_id, crm));
                    p.people.insert((t.name.clone(), crm, l.email.clone().unwrap_or_default()));
                }
                p.messages.push((leads_raw.clone(), t.name.clone(), codec::encode(&l)?));
                p.leads += 1;
            } else if t.activities && round % 4 == 3 {
                let uid = format!("rm{i}@cal.seller.example");
                for &crm in &t.crms {
                    p.records.insert(activity_key(&t.name, ActivityKind::Meeting, &uid, crm));
                }
                p.messages.push((meetings_raw.clone(), t.name.clone(), codec::encode(&meeting(&t.name, i, 1, now))?));
                p.meetings += 1;
                // Moved; and some of those cancelled afterwards.
                if round % 8 == 3 {
                    later.entry(i + 60).or_default().push((
                        meetings_raw.clone(),
                        t.name.clone(),
                        codec::encode(&meeting(&t.name, i, 2, now))?,
                    ));
                    p.updates += 1;
                }
                if round % 16 == 3 {
                    later.entry(i + 120).or_default().push((
                        meetings_raw.clone(),
                        t.name.clone(),
                        codec::encode(&meeting(&t.name, i, 3, now))?,
                    ));
                    p.updates += 1;
                }
            }
        }
        let msg = (calls_raw.clone(), ev.tenant_id.clone(), codec::encode(&ev)?);
        if i % 20 == 7 {
            later.entry(i + 50).or_default().push(msg.clone());
            p.repeats += 1;
        }
        p.messages.push(msg);
        if let Some(due) = later.remove(&i) {
            p.messages.extend(due);
        }
    }
    p.messages.extend(later.into_values().flatten());
    Ok(p)
}

/// One service process, started again after every kill.
struct Service {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    kills: usize,
    /// Exits nobody asked for, with their status.
    exits: Vec<String>,
    /// Killed, and to be started again at this time.
    down_until: Option<Instant>,
    /// Restarts because the broker left it holding no partitions.
    heals: usize,
    /// Stopped (SIGSTOP) until then: a zombie.
    stopped_until: Option<Instant>,
    zombies: usize,
}

/// Whether a service's latest assignment, in its log, was empty.
fn stranded(log: &Path) -> bool {
    // The latest assignment is near the end: read the last 256 KiB, not the whole run's log.
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
        let mut bytes = vec![];
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text.lines()
        .rev()
        .map(strip_ansi)
        .find(|l| l.contains("partitions assigned") || l.contains("rebalance=Assign("))
        .is_some_and(|l| l.contains("partitions=0") || l.contains("Assign([])"))
}

/// A log line without its colours (the services' text logs colour field names).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Env {
    vars: Vec<(String, String)>,
    logs: PathBuf,
}

impl Service {
    fn start(&mut self, env: &Env) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(env.logs.join(format!("{}.log", self.name)))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap; true if it was running.
    fn stop_now(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        let _ = c.kill();
        let _ = c.wait();
        true
    }

    fn kill9(&mut self) {
        if self.stop_now() {
            self.kills += 1;
        }
        self.stopped_until = None;
    }

    /// SIGSTOP (a paused process: a GC pause, a slow node, a frozen VM) or SIGCONT.
    fn pause(&mut self, stop: bool) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, if stop { libc::SIGSTOP } else { libc::SIGCONT }) };
        }
    }

    /// Notes an exit of its own (a crash, or a stage giving up) and starts it again, as
    /// Kubernetes would.
    fn reap(&mut self, env: &Env) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child {
            if let Some(status) = c.try_wait()? {
                self.exits.push(status.to_string());
                self.child = None;
                self.start(env)?;
            }
        }
        Ok(())
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if self.stopped_until.take().is_some() {
            self.pause(false);
        }
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    /// A run that stops on an error leaves no service behind.
    fn drop(&mut self) {
        self.stop_now();
    }
}

enum Broker {
    Mock(DevBroker),
    Tansu(crm_dev::Tansu),
}

impl BrokerKind {
    /// Nothing: tansu's SQLite engine returns every record from the asked offset, where its
    /// memory engine (dynostore) skipped the rest of a batch fetched from inside it, which
    /// once needed one record per batch here.
    fn producer_options(self) -> &'static str {
        ""
    }
}

impl Broker {
    fn start(kind: BrokerKind, partitions: i32, topics: &[String], logs: &Path) -> anyhow::Result<Broker> {
        match kind {
            BrokerKind::Mock => Ok(Broker::Mock(DevBroker::start(1, partitions, topics)?)),
            BrokerKind::Tansu => {
                // Its log beside the services' logs.
                let tansu = crm_dev::Tansu::start(logs)?;
                create_topics(&Kafka::local(&tansu.bootstrap), topics, partitions)?;
                Ok(Broker::Tansu(tansu))
            }
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(b) => b.bootstrap_servers(),
            Broker::Tansu(t) => t.bootstrap.clone(),
        }
    }
}

/// What the audit store says so far: keys with a write, and dead letters.
struct Seen {
    written: HashSet<String>,
    dead: HashMap<Outcome, (String, i64)>,
}

async fn seen(db: &tokio_postgres::Client) -> anyhow::Result<Seen> {
    let written = db
        .query(
            "SELECT DISTINCT idempotency_key FROM audit WHERE stage = 'WRITER' AND operation = 'write' \
             AND outcome IN ('SUCCEEDED', 'DUPLICATE') AND idempotency_key IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let dead = db
        .query("SELECT tenant_id, coalesce(call_id, ''), coalesce(crm, ''), reason, count(*) FROM dlq GROUP BY 1, 2, 3, 4", &[])
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4))))
        .collect();
    Ok(Seen { written, dead })
}

async fn progress(db: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let r = db
        .query_one(
            "SELECT (SELECT count(DISTINCT idempotency_key) FROM audit WHERE stage = 'WRITER' AND operation = 'write' \
             AND outcome IN ('SUCCEEDED', 'DUPLICATE')), \
             (SELECT count(*) FROM (SELECT DISTINCT tenant_id, call_id, crm, reason FROM dlq) d)",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// The run's places: its directory, logs, tokio runtime (for PostgreSQL) and the parts every
/// phase reaches.
struct Stage<'a> {
    o: &'a Opts,
    dir: PathBuf,
    logs: PathBuf,
    rt: tokio::runtime::Runtime,
    sim: Sim,
    sim_url: String,
}

pub fn run(o: Opts) -> anyhow::Result<()> {
    anyhow::ensure!(o.tenants >= 8, "--tenants must be at least 8 (one revoked tenant per CRM, all four CRMs)");
    anyhow::ensure!(o.kill_every_min > 0.0 && o.kill_every_max >= o.kill_every_min, "bad kill interval");
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("crm-sync-reliability-{}", std::process::id()));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let topics = Topics::default();
    let broker = Broker::start(o.broker, o.partitions, &topics.all(), &logs)?;
    let (sim_url, sim_child) = spawn_crm_sim(&sibling_binary("crm-sim")?, None, true)?;
    let _sim = crate::writer::Killed(vec![sim_child]);
    let sim = Sim { url: sim_url.clone(), http: reqwest::blocking::Client::new() };
    let stage = Stage { o: &o, dir, logs, rt, sim, sim_url };
    let mut redis = DevRedis::start(Some(&stage.dir.join("redis")))?;
    let db_name = format!("crm_sync_reliability_{}", std::process::id());
    let db_url = stage.rt.block_on(audit_store::create_database(&o.database_url, &db_name))?;

    let ts = tenants(o.tenants, o.activities_every);
    let bootstrap = broker.bootstrap();
    let env = stage.set_up(&ts, &bootstrap, &redis, &db_url)?;
    let plan = plan(&ts, o.calls, &topics)?;
    stage.announce(&plan);
    let services = Mutex::new(start_services(&o, &env)?);

    let db = stage.rt.block_on(audit_store::pg_connect(&db_url))?;
    let live = Live {
        services,
        env,
        produced: AtomicUsize::new(0),
        through: AtomicUsize::new(0),
        chaos_on: AtomicBool::new(true),
        redis_restarted: Mutex::new(None),
        redis_lost: Mutex::new(None),
        t0: Instant::now(),
    };
    let (elapsed, seen, produce_s) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| live.produce(&o, &plan, &bootstrap));
        let chaos = scope.spawn(|| live.chaos(&o, &mut redis, plan.expected()));
        let r = live.watch(&stage, &db, &plan, || producer.is_finished());
        live.chaos_on.store(false, Ordering::Relaxed);
        let produce_s = producer.join().expect("producer thread")?;
        chaos.join().expect("chaos thread")?;
        r.map(|(d, s)| (d, s, produce_s))
    })?;

    let Live { services, redis_restarted, redis_lost, .. } = live;
    let mut services = services.into_inner().unwrap();
    let unclean = stop_services(&mut services);
    let tally = Tally::collect(&stage, &ts, &plan, &seen)?;
    let chaos =
        Chaos { services: &services, redis_restarted: redis_restarted.into_inner().unwrap(), redis_lost: redis_lost.into_inner().unwrap() };
    tally.print(&o, &plan, &chaos, &unclean, elapsed.as_secs_f64(), produce_s);
    println!("  wall              {:.1} s in all", started.elapsed().as_secs_f64());
    let failures = tally.failures(&unclean);

    drop(db);
    if failures.is_empty() {
        println!("  result            PASS");
        stage.rt.block_on(audit_store::drop_database(&o.database_url, &db_name))?;
        drop(redis);
        let _ = std::fs::remove_dir_all(&stage.dir);
        Ok(())
    } else {
        println!("  result            FAIL; logs and the database {db_name} kept: {}", stage.dir.display());
        anyhow::bail!("reliability checks failed:\n  {}", failures.join("\n  "))
    }
}

impl Stage<'_> {
    /// crm-sim accounts with their faults, the tenants' config and contracts, a new claim
    /// store, and the services' environment.
    fn set_up(&self, ts: &[Tenant], bootstrap: &str, redis: &DevRedis, db_url: &str) -> anyhow::Result<Env> {
        let (o, sim, sim_url, dir) = (self.o, &self.sim, &self.sim_url, &self.dir);
        let f = o.fault_pct / 100.0;
        let mut config = String::new();
        let mut vars: Vec<(String, String)> = vec![];
        for (ti, t) in ts.iter().enumerate() {
            config += &format!("[tenants.{}]\ndefault_region = \"US\"\n", t.name);
            for &crm in &t.crms {
                let p: Profile = profile(crm);
                let token = format!("tok-{}-{}", crm.as_str(), t.name);
                let mut spec = (p.account)(&t.name);
                // Salesforce and Zoho tenants on OAuth: the writers refresh through token
                // endpoints that fail now and then. (Refresh tokens do not rotate here: with
                // rotation, a Redis that loses its data loses the only live refresh token, and
                // the tenant must authorise again; see the README.)
                let oauth = matches!(crm, Crm::Salesforce | Crm::Zoho);
                let refresh = format!("rt-{}-{}", crm.as_str(), t.name);
                spec["tokens"] = if oauth {
                    json!([{"token": token, "kind": "oauth", "refresh_token": refresh, "client_id": "crm-sync-app", "client_secret": "app-secret", "rotate_refresh": false}])
                } else {
                    json!([{"token": token, "kind": "static"}])
                };
                if t.activities {
                    // Emails' and meetings' objects carry a key too (where it is not the
                    // calls' own), and the customer is a contact with her address.
                    let calls_key = spec["key_field"].clone();
                    let mut keys = vec![];
                    for kind in [ActivityKind::Email, ActivityKind::Meeting] {
                        let Some(k) = crate::writer::kind_parts(crm, kind)? else { continue };
                        k.define_key(&mut spec);
                        let key = k.key_spec();
                        if key != calls_key && !keys.contains(&key) {
                            keys.push(key);
                        }
                        let contacts = spec["objects"].as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
                        if kind == ActivityKind::Email {
                            if let Some(list) = spec["objects"][&contacts].as_array_mut() {
                                list.push((k.contact)(CUSTOMER_EMAIL));
                            }
                        }
                    }
                    spec["key_fields"] = json!(keys);
                    if t.leads() {
                        if let Some(k) = crate::writer::kind_parts(crm, ActivityKind::Lead)? {
                            k.define_key(&mut spec);
                        }
                    }
                }
                // Each account draws its faults from its own sequence: with one seed for all,
                // every account would fault (or not) on the same requests.
                spec["seed"] = json!(o.seed.wrapping_mul(1_000_003).wrapping_add((ti * 4 + crm as usize) as u64));
                sim.admin(reqwest::Method::POST, "/accounts", Some(spec.clone()))?;
                let faults = [
                    json!({"kind": "throttle", "rate": f * 0.3}),
                    json!({"kind": "503", "rate": f * 0.2}),
                    json!({"kind": "502", "rate": f * 0.2, "after_write": true, "endpoint": p.create_endpoint}),
                    json!({"kind": "timeout", "rate": f * 0.15, "latency_ms": 7000, "after_write": true, "endpoint": p.create_endpoint}),
                    json!({"kind": "timeout", "rate": f * 0.15, "latency_ms": 7000}),
                    // Applied 1 s after the writer (5 s timeout) gave up on it.
                    json!({"kind": "late_write", "rate": f * 0.15, "latency_ms": 7000, "apply_after_ms": 6000, "endpoint": p.create_endpoint}),
                ];
                for fault in faults {
                    sim.admin(reqwest::Method::POST, &format!("/accounts/{}/{}/faults", crm.as_str(), t.name), Some(fault))?;
                }
                if t.revoked == Some(crm) {
                    sim.admin(
                        reqwest::Method::POST,
                        &format!("/accounts/{}/{}/permissions/{}/revoke", crm.as_str(), t.name, p.write_permission),
                        None,
                    )?;
                }
                let secret = format!("TOK_{}_{}", crm.as_str(), t.name).to_uppercase();
                // A throttled Salesforce org is probed again after 2 s rather than a minute, so
                // the injected 403s do not dominate the run.
                let limits = if crm == Crm::Salesforce { "limits = { recheck_s = 2 }\n" } else { "" };
                let lead_lines =
                    if t.leads() { crate::writer::kind_parts(crm, ActivityKind::Lead)?.map_or("", |k| k.connection) } else { "" };
                let activities = match (t.activities, t.leads()) {
                    (true, true) => format!("activities = [\"call\", \"email\", \"meeting\", \"lead\"]\n{lead_lines}"),
                    (true, false) => "activities = [\"call\", \"email\", \"meeting\"]\n".to_string(),
                    _ => String::new(),
                };
                config += &format!(
                    "[tenants.{}.crms.{}]\nplan = \"{}\"\ncredentials_secret = \"{secret}\"\nbase_url = \"{sim_url}/{}\"\n{limits}{activities}",
                    t.name,
                    crm.as_str(),
                    spec["plan"].as_str().unwrap_or_default(),
                    crm.as_str()
                );
                let value = match (oauth, t.bad_token == Some(crm)) {
                    (true, bad) => json!({"client_id": "crm-sync-app", "client_secret": "app-secret", "refresh_token": if bad { format!("{refresh}-revoked") } else { refresh }}).to_string(),
                    (false, true) => format!("{token}-revoked"),
                    (false, false) => token,
                };
                vars.push((secret, value));
            }
        }
        for crm in [Crm::Salesforce, Crm::Zoho] {
            for fault in [
                json!({"kind": "503", "rate": 0.1}),
                json!({"kind": "429", "rate": 0.05}),
                json!({"kind": "timeout", "rate": 0.03, "latency_ms": 7000}),
            ] {
                sim.admin(reqwest::Method::POST, &format!("/token-faults/{}", crm.as_str()), Some(fault))?;
            }
        }
        let tenants_file = dir.join("tenants.toml");
        std::fs::write(&tenants_file, &config)?;
        // The run's Redis is a new claim store (until the run makes it lose its data).
        crm_dev::fresh_claim_store(&redis.url(), "crm-sync", &tenants_file)?;
        std::fs::create_dir_all(dir.join("contracts"))?;
        for crm in CRMS {
            std::fs::write(dir.join(format!("contracts/{}.toml", crm.as_str())), profile(crm).contract)?;
            for kind in [ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead] {
                if kind == ActivityKind::Lead && !crm_common::tenants::LEAD_CRMS.contains(&crm) {
                    continue;
                }
                if let Some(k) = crate::writer::kind_parts(crm, kind)? {
                    std::fs::write(dir.join(format!("contracts/{}.{}.toml", crm.as_str(), kind.as_str())), k.contract)?;
                }
            }
        }
        vars.extend(
            [
                ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_string()),
                ("REDIS_URL", redis.url()),
                ("DATABASE_URL", db_url.to_string()),
                ("TENANTS_CONFIG", tenants_file.display().to_string()),
                ("CONTRACTS_DIR", dir.join("contracts").display().to_string()),
                // A killed member's partitions move on after 6 s rather than librdkafka's 45.
                ("KAFKA_OPTIONS", format!("session.timeout.ms=6000,heartbeat.interval.ms=1000{}", o.broker.producer_options())),
                // A killed writer's claims are recovered after 10 s; a held request is given up
                // after 5 s (crm-sim's timeouts hold 7 s).
                ("WRITER_LEASE", "10s".into()),
                ("WRITER_HTTP_TIMEOUT", "5s".into()),
                ("CRM_SYNC_TOKEN_KEY", crm_dev::DEV_TOKEN_KEY.into()),
                ("WRITER_RETRY_BASE", "100ms".into()),
                ("WRITER_RETRY_MAX_WAIT", "5s".into()),
                // crm-sim's late writes land 1 s after the writer gave up; HubSpot's search lags
                // 2 s there; the machine has one clock.
                ("WRITER_LATE_WRITE_HORIZON", "3s".into()),
                ("HUBSPOT_SEARCH_LAG", "3s".into()),
                ("ZOHO_SEARCH_LAG", "3s".into()),
                ("WRITER_CLOCK_SKEW", "2s".into()),
                // Services log at info; RELIABILITY_LOG sets another filter for forensics.
                ("RUST_LOG", std::env::var("RELIABILITY_LOG").unwrap_or_else(|_| "info".into())),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        Ok(Env { vars, logs: self.logs.clone() })
    }

    fn announce(&self, plan: &Plan) {
        eprintln!(
            "reliability: {} calls, {} emails, {} meetings and {} leads ({} messages with {} repeats and {} updates) for {} tenants on {:?}; \
             expecting {} records ({:?}) and {} dead letters; logs in {}",
            self.o.calls,
            plan.emails,
            plan.meetings,
            plan.leads,
            plan.messages.len(),
            plan.repeats,
            plan.updates,
            self.o.tenants,
            self.o.broker,
            plan.records.len(),
            plan.records_by_crm(),
            plan.dead.len(),
            self.logs.display()
        );
    }
}

impl Plan {
    fn expected(&self) -> usize {
        self.records.len() + self.dead.len()
    }

    fn records_by_crm(&self) -> BTreeMap<&str, usize> {
        let mut by_crm: BTreeMap<&str, usize> = BTreeMap::new();
        for k in &self.records {
            *by_crm.entry(k.rsplit(':').next().unwrap_or_default()).or_default() += 1;
        }
        by_crm
    }
}

/// The normaliser, deduper and audit-sink once each, and every CRM's writer `--replicas`
/// times, started.
fn start_services(o: &Opts, env: &Env) -> anyhow::Result<Vec<Service>> {
    let mut services: Vec<Service> = ["normaliser", "deduper", "audit-sink"]
        .iter()
        .map(|s| (s.to_string(), s.to_string(), vec![]))
        .chain(CRMS.iter().flat_map(|c| {
            (1..=o.replicas.max(1)).map(move |r| {
                (format!("writer-{}-{r}", c.as_str()), "writer".to_string(), vec!["--crm".to_string(), c.as_str().to_string()])
            })
        }))
        .map(|(name, bin, args)| {
            Ok(Service {
                name,
                bin: sibling_binary(&bin)?,
                args,
                child: None,
                kills: 0,
                exits: vec![],
                down_until: None,
                heals: 0,
                stopped_until: None,
                zombies: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for s in &mut services {
        s.start(env)?;
    }
    Ok(services)
}

/// Stop every service as Kubernetes would (SIGTERM); the ones that did not leave cleanly.
fn stop_services(services: &mut [Service]) -> Vec<String> {
    let mut unclean = vec![];
    for s in services {
        match s.terminate() {
            Some(st) if st.success() => {}
            st => unclean.push(format!("{}: {st:?}", s.name)),
        }
    }
    unclean
}

/// What the producer, chaos and watch threads share while the run is live.
struct Live {
    services: Mutex<Vec<Service>>,
    env: Env,
    produced: AtomicUsize,
    /// Outcomes (records and dead letters) seen in the audit store so far.
    through: AtomicUsize,
    chaos_on: AtomicBool,
    redis_restarted: Mutex<Option<f64>>,
    redis_lost: Mutex<Option<f64>>,
    t0: Instant,
}

impl Live {
    fn at(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Upstream: the plan's messages at `--rate` calls per second, each to its raw topic.
    /// Returns the seconds it took.
    fn produce(&self, o: &Opts, plan: &Plan, bootstrap: &str) -> anyhow::Result<f64> {
        let producer = Kafka::local(bootstrap).threaded_producer(&[("linger.ms", "10"), ("batch.num.messages", "10000")])?;
        let start = Instant::now();
        let per_call = o.calls as f64 / plan.messages.len() as f64 / o.rate as f64;
        for (i, (topic, key, payload)) in plan.messages.iter().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 * per_call);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            crate::send_waiting(&producer, BaseRecord::to(topic).key(key).payload(payload));
            self.produced.store(i + 1, Ordering::Relaxed);
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Chaos: SIGKILL a random service every few seconds and start it again, SIGSTOP a writer
    /// now and then; Redis SIGKILLed a third of the way through the outcomes and losing its
    /// data two thirds through. At the end, whatever is down or stopped comes back.
    fn chaos(&self, o: &Opts, redis: &mut DevRedis, expected: usize) -> anyhow::Result<()> {
        let r = self.faults(o, redis, expected);
        if let Err(e) = &r {
            eprintln!("[{:>5.1}s] chaos failed: {e:#}; stopping the faults", self.at());
            self.chaos_on.store(false, Ordering::Relaxed);
        }
        for s in self.services.lock().unwrap().iter_mut() {
            if s.stopped_until.take().is_some() {
                s.pause(false);
            }
        }
        for s in self.services.lock().unwrap().iter_mut().filter(|s| s.child.is_none()) {
            s.down_until = None;
            s.start(&self.env)?;
        }
        r
    }

    fn faults(&self, o: &Opts, redis: &mut DevRedis, expected: usize) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(o.seed);
        let mut next = Instant::now() + Duration::from_secs_f64(rng.random_range(o.kill_every_min..=o.kill_every_max));
        let zombie_gap =
            |rng: &mut StdRng| Duration::from_secs_f64(rng.random_range(o.zombie_every_min..=o.zombie_every_max.max(o.zombie_every_min)));
        let mut next_zombie = Instant::now() + zombie_gap(&mut rng);
        let restart_after = Duration::from_secs_f64(o.restart_after_s);
        while self.chaos_on.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let mut svcs = self.services.lock().unwrap();
            for s in svcs.iter_mut() {
                if s.stopped_until.is_some_and(|t| Instant::now() >= t) {
                    s.stopped_until = None;
                    s.pause(false);
                    eprintln!("[{:>5.1}s] SIGCONT {}: the zombie resumes", self.at(), s.name);
                }
                if s.stopped_until.is_some() {
                    continue;
                }
                s.reap(&self.env)?;
                if s.child.is_none() && s.down_until.is_some_and(|t| Instant::now() >= t) {
                    s.down_until = None;
                    s.start(&self.env)?;
                }
            }
            let through = self.through.load(Ordering::Relaxed);
            if self.redis_restarted.lock().unwrap().is_none() && through * 3 >= expected {
                eprintln!("[{:>5.1}s] SIGKILL redis-server; up again in 2 s", self.at());
                redis.kill();
                drop(svcs);
                std::thread::sleep(Duration::from_secs(2));
                redis.up()?;
                *self.redis_restarted.lock().unwrap() = Some(self.at());
                continue;
            }
            if self.redis_lost.lock().unwrap().is_none() && through * 3 >= expected * 2 {
                eprintln!("[{:>5.1}s] redis-server loses its data (restarted without its append-only file)", self.at());
                drop(svcs);
                redis.lose_data()?;
                *self.redis_lost.lock().unwrap() = Some(self.at());
                continue;
            }
            if o.zombie_s > 0.0 && Instant::now() >= next_zombie {
                let writers: Vec<usize> = (0..svcs.len())
                    .filter(|&i| svcs[i].name.starts_with("writer-") && svcs[i].child.is_some() && svcs[i].stopped_until.is_none())
                    .collect();
                if !writers.is_empty() {
                    let s = &mut svcs[writers[rng.random_range(0..writers.len())]];
                    s.pause(true);
                    s.zombies += 1;
                    s.stopped_until = Some(Instant::now() + Duration::from_secs_f64(o.zombie_s));
                    eprintln!("[{:>5.1}s] SIGSTOP {} for {:.0} s (past its session timeout and lease)", self.at(), s.name, o.zombie_s);
                }
                next_zombie = Instant::now() + zombie_gap(&mut rng);
            }
            if Instant::now() >= next {
                let i = rng.random_range(0..svcs.len());
                let s = &mut svcs[i];
                if s.child.is_some() && s.stopped_until.is_none() {
                    s.kill9();
                    s.down_until = Some(Instant::now() + restart_after);
                    eprintln!("[{:>5.1}s] SIGKILL {} (kill {} of it)", self.at(), s.name, s.kills);
                }
                next = Instant::now() + Duration::from_secs_f64(rng.random_range(o.kill_every_min..=o.kill_every_max));
            }
        }
        Ok(())
    }

    /// Watch the audit store until every expected outcome is there, or nothing moves. The
    /// faults stop once nearly everything is through (or nothing moves under them).
    fn watch(
        &self,
        stage: &Stage,
        db: &tokio_postgres::Client,
        plan: &Plan,
        produced_all: impl Fn() -> bool,
    ) -> anyhow::Result<(Duration, Seen)> {
        let o = stage.o;
        let expected = plan.expected();
        let mut last = (0, 0);
        let mut last_move = Instant::now();
        loop {
            std::thread::sleep(Duration::from_secs(3));
            let now = stage.rt.block_on(progress(db)).unwrap_or(last);
            if now != last {
                last_move = Instant::now();
            }
            last = now;
            let done = now.0 as usize + now.1 as usize;
            self.through.store(done, Ordering::Relaxed);
            eprintln!(
                "[{:>5.1}s] produced {}/{}; written {} of {}, dead letters {} of {}",
                self.at(),
                self.produced.load(Ordering::Relaxed),
                plan.messages.len(),
                now.0,
                plan.records.len(),
                now.1,
                plan.dead.len()
            );
            if self.chaos_on.load(Ordering::Relaxed) && produced_all() && done * 100 >= expected * 95 {
                eprintln!("[{:>5.1}s] 95% through: no more kills", self.at());
                self.chaos_on.store(false, Ordering::Relaxed);
                last_move = Instant::now();
            }
            if done >= expected {
                let s = stage.rt.block_on(seen(db))?;
                let complete = plan.records.iter().all(|k| s.written.contains(k)) && plan.dead.keys().all(|k| s.dead.contains_key(k));
                if complete {
                    return Ok((self.t0.elapsed(), s));
                }
            }
            if o.broker == BrokerKind::Tansu && last_move.elapsed() > Duration::from_secs(20) && self.heal_stranded()? {
                last_move = Instant::now();
            }
            if self.chaos_on.load(Ordering::Relaxed) && last_move.elapsed() > Duration::from_secs(o.stall_s) {
                eprintln!("[{:>5.1}s] nothing moved for {} s under faults: stopping them", self.at(), o.stall_s);
                self.chaos_on.store(false, Ordering::Relaxed);
                last_move = Instant::now();
            }
            if !self.chaos_on.load(Ordering::Relaxed) && last_move.elapsed() > Duration::from_secs(o.stall_s) {
                eprintln!("nothing moved for {} s: checking what is there", o.stall_s);
                return Ok((self.t0.elapsed(), stage.rt.block_on(seen(db))?));
            }
        }
    }

    /// tansu 0.6.0's group coordinator can leave a killed member's partitions with it when
    /// the replacement joins: the replacement is assigned nothing and no rebalance follows
    /// (writers idle for minutes with "partitions assigned partitions=0"; a 7 s restart delay
    /// did not avoid it). Kafka and the mock evict the dead member and rebalance. Do what an
    /// operator would: restart a consumer left holding nothing, so it leaves and joins again.
    /// Whether one was restarted.
    fn heal_stranded(&self) -> anyhow::Result<bool> {
        let mut healed = false;
        let mut svcs = self.services.lock().unwrap();
        for s in svcs
            .iter_mut()
            .filter(|s| s.child.is_some() && s.stopped_until.is_none() && stranded(&self.env.logs.join(format!("{}.log", s.name))))
        {
            eprintln!("[{:>5.1}s] {} holds no partitions and nothing moves: restarting it", self.at(), s.name);
            s.terminate();
            s.start(&self.env)?;
            s.heals += 1;
            healed = true;
        }
        Ok(healed)
    }
}

/// What chaos did, for the report.
struct Chaos<'a> {
    services: &'a [Service],
    redis_restarted: Option<f64>,
    redis_lost: Option<f64>,
}

/// What the run left: crm-sim's records and answers, the DLQ against the plan, and what the
/// writers' logs say of leases and recoveries.
struct Tally {
    written: usize,
    duplicates: Vec<String>,
    /// People the leads named that are not exactly one person in their CRM (tenant, CRM,
    /// email: how many).
    people_wrong: Vec<String>,
    unexpected_records: Vec<String>,
    lost: Vec<String>,
    unaudited: Vec<String>,
    dead_letters: usize,
    dlq_by_reason: BTreeMap<String, usize>,
    dlq_rows: i64,
    wrong_reason: Vec<String>,
    unexpected_dlq: Vec<String>,
    missing_dlq: Vec<Outcome>,
    panics: Vec<String>,
    lease_lost: usize,
    reclaimed: usize,
    recoveries: BTreeMap<String, usize>,
    late_writes: u64,
    requests: u64,
    answers: BTreeMap<String, BTreeMap<String, u64>>,
    token_answers: Vec<String>,
}

impl Tally {
    fn collect(stage: &Stage, ts: &[Tenant], plan: &Plan, seen: &Seen) -> anyhow::Result<Tally> {
        let sim = &stage.sim;
        // crm-sim: records per key, what it answered, and the creates it applied late.
        let mut records_at: HashMap<String, u64> = HashMap::new();
        let mut answers: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut requests = 0u64;
        let mut late_writes = 0u64;
        for t in ts {
            for &crm in &t.crms {
                let s = sim.admin(reqwest::Method::GET, &format!("/accounts/{}/{}", crm.as_str(), t.name), None)?;
                for (k, v) in s["keys"].as_object().into_iter().flatten() {
                    // Pipedrive's key rides in the note behind a marker; Zoho's emails are
                    // known by their Message-ID.
                    let key = match k.strip_prefix('<').and_then(|m| m.strip_suffix('>')) {
                        Some(mid) => activity_key(&t.name, ActivityKind::Email, mid, crm),
                        None => k.rsplit_once("crm-sync-key:").map_or(k.as_str(), |(_, k)| k).trim().to_string(),
                    };
                    *records_at.entry(key).or_default() += v["total"].as_u64().unwrap_or(0);
                }
                for (endpoint, counts) in s["counters"].as_object().into_iter().flatten() {
                    for (status, n) in counts.as_object().into_iter().flatten() {
                        let n = n.as_u64().unwrap_or(0);
                        requests += n;
                        if status.as_str() >= "400" {
                            *answers.entry(status.clone()).or_default().entry(endpoint.clone()).or_default() += n;
                        }
                        if endpoint.ends_with("(applied late)") {
                            late_writes += n;
                        }
                    }
                }
            }
        }
        let mut token_answers = vec![];
        for crm in [Crm::Salesforce, Crm::Zoho] {
            let a = sim.admin(reqwest::Method::GET, &format!("/token-faults/{}", crm.as_str()), None)?;
            let by: Vec<String> = a["answers"].as_object().into_iter().flatten().map(|(st, n)| format!("{st} ×{n}")).collect();
            token_answers.push(format!("{} {}", crm.as_str(), by.join(", ")));
        }

        // The DLQ: every expected entry with its reason, and nothing else.
        let mut dlq_by_reason: BTreeMap<String, usize> = BTreeMap::new();
        let mut wrong_reason = vec![];
        let mut unexpected_dlq = vec![];
        let mut dlq_rows = 0i64;
        for (k, (reason, n)) in &seen.dead {
            dlq_rows += n;
            *dlq_by_reason.entry(reason.clone()).or_default() += 1;
            match plan.dead.get(k) {
                Some(r) if r.as_str() == reason => {}
                Some(r) => wrong_reason.push(format!("{k:?}: {reason}, expected {}", r.as_str())),
                None => unexpected_dlq.push(format!("{k:?}: {reason}")),
            }
        }

        // The people leads named: one each, in the CRM's people (HubSpot's contacts;
        // Salesforce's and Zoho's contacts and leads; Pipedrive's persons).
        let mut people_wrong = vec![];
        let mut by_account: BTreeMap<(String, Crm), Vec<String>> = BTreeMap::new();
        for (t, crm, email) in &plan.people {
            by_account.entry((t.clone(), *crm)).or_default().push(email.clone());
        }
        for ((t, crm), emails) in by_account {
            let (tables, field): (&[&str], &str) = match crm {
                Crm::Salesforce => (&["Contact", "Lead"], "Email"),
                Crm::Zoho => (&["Contacts", "Leads"], "Email"),
                Crm::Pipedrive => (&["persons"], "emails"),
                _ => (&["contacts"], "email"),
            };
            let mut held: Vec<String> = vec![];
            for table in tables {
                let r = sim.admin(reqwest::Method::GET, &format!("/accounts/{}/{t}/objects/{table}?deleted=false", crm.as_str()), None)?;
                for p in r["records"].as_array().into_iter().flatten() {
                    // A Pipedrive person's addresses are a list of {value, primary}.
                    match &p["fields"][field] {
                        Value::String(e) => held.push(e.to_lowercase()),
                        Value::Array(list) => held.extend(list.iter().filter_map(|e| e["value"].as_str()).map(str::to_lowercase)),
                        _ => {}
                    }
                }
            }
            for e in emails {
                let n = held.iter().filter(|h| **h == e).count();
                if n != 1 {
                    people_wrong.push(format!("{t}/{} {e} ×{n}", crm.as_str()));
                }
            }
        }

        // A record is in the CRM under its key; a lead's is its person (no key of ours):
        // written when audited so, the person counted above.
        let landed = |k: &String| records_at.contains_key(k) || is_lead(k) && seen.written.contains(k);
        let Logged { panics, lease_lost, reclaimed, recoveries } = read_logs(&stage.logs)?;
        Ok(Tally {
            written: plan.records.iter().filter(|k| landed(k)).count(),
            people_wrong,
            duplicates: records_at.iter().filter(|(_, n)| **n > 1).map(|(k, n)| format!("{k} ×{n}")).collect(),
            unexpected_records: records_at.keys().filter(|k| !plan.records.contains(*k)).cloned().collect(),
            lost: plan.records.iter().filter(|k| !landed(k)).cloned().collect(),
            unaudited: plan.records.iter().filter(|k| records_at.contains_key(*k) && !seen.written.contains(*k)).cloned().collect(),
            dead_letters: seen.dead.len(),
            dlq_by_reason,
            dlq_rows,
            wrong_reason,
            unexpected_dlq,
            missing_dlq: plan.dead.keys().filter(|k| !seen.dead.contains_key(*k)).cloned().collect(),
            panics,
            lease_lost,
            reclaimed,
            recoveries,
            late_writes,
            requests,
            answers,
            token_answers,
        })
    }

    fn print(&self, o: &Opts, plan: &Plan, chaos: &Chaos, unclean: &[String], secs: f64, produce_s: f64) {
        let written = self.written;
        let services = chaos.services;
        let outcomes = written + self.dead_letters;
        println!(
            "\nbench reliability --broker {:?}: {} calls, {} tenants, {} input messages, faults {}% of CRM requests",
            o.broker,
            o.calls,
            o.tenants,
            plan.messages.len(),
            o.fault_pct
        );
        println!(
            "  expected          {} records ({}), {} dead letters",
            plan.records.len(),
            plan.records_by_crm().iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", "),
            plan.dead.len()
        );
        println!(
            "  activities        {} emails ({} of the records) and {} meetings ({} of the records) among the calls",
            plan.emails,
            plan.records.iter().filter(|k| k.contains(":email:")).count(),
            plan.meetings,
            plan.records.iter().filter(|k| k.contains(":meeting:")).count()
        );
        println!("  written           {written}");
        println!("  duplicates        {}", self.duplicates.len());
        println!("  lost              {}", self.lost.len());
        println!(
            "  unexpected        {} records, {} dead letters, {} with the wrong reason",
            self.unexpected_records.len(),
            self.unexpected_dlq.len(),
            self.wrong_reason.len()
        );
        println!(
            "  DLQ by reason     {} (expected {}, missing {}); {} entries for {} failing inputs{}",
            self.dlq_by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", "),
            plan.dead.len(),
            self.missing_dlq.len(),
            self.dlq_rows,
            plan.dead_rows,
            // A crash between the deduper's output and its commit re-sends a call to the writer
            // as a new message, which fails again as a new entry; a stage met again with the
            // same input writes the same entry id, stored once.
            if self.dlq_rows as usize > plan.dead_rows {
                format!(" ({} more from inputs the deduper re-sent after a crash)", self.dlq_rows as usize - plan.dead_rows)
            } else {
                String::new()
            }
        );
        println!(
            "  audit             {} of {written} records have their write in the audit store{}",
            written - self.unaudited.len(),
            by_crm(&self.unaudited)
        );
        println!(
            "  chaos             {} SIGKILLs ({}); Redis SIGKILLed and restarted at {:.1} s; restarts of consumers left with no partitions: {}; unasked exits: {}",
            services.iter().map(|s| s.kills).sum::<usize>(),
            services.iter().map(|s| format!("{} {}", s.name, s.kills)).collect::<Vec<_>>().join(", "),
            chaos.redis_restarted.unwrap_or(f64::NAN),
            services.iter().map(|s| s.heals).sum::<usize>(),
            services.iter().filter(|s| !s.exits.is_empty()).map(|s| format!("{} {:?}", s.name, s.exits)).collect::<Vec<_>>().join("; ").chars().take(600).collect::<String>()
        );
        println!(
            "  zombies           {} SIGSTOPs past the session timeout and lease ({}); lease losses {} (writes fenced off before sending: {}, keys claimed again: {})",
            services.iter().map(|s| s.zombies).sum::<usize>(),
            services.iter().filter(|s| s.zombies > 0).map(|s| format!("{} {}", s.name, s.zombies)).collect::<Vec<_>>().join(", "),
            self.lease_lost.max(self.reclaimed),
            self.lease_lost,
            self.reclaimed
        );
        println!(
            "  redis             restarted from its AOF at {:.1} s; lost its data at {:.1} s",
            chaos.redis_restarted.unwrap_or(f64::NAN),
            chaos.redis_lost.unwrap_or(f64::NAN)
        );
        println!(
            "  recoveries        {} ({})",
            self.recoveries.values().sum::<usize>(),
            if self.recoveries.is_empty() {
                "none".to_string()
            } else {
                self.recoveries.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
            }
        );
        println!(
            "  leads             {} leads naming {} people (tenant, CRM, email): {} not exactly one person",
            plan.leads,
            plan.people.len(),
            self.people_wrong.len()
        );
        println!("  late writes       {} creates applied after the writer gave up", self.late_writes);
        println!("  token endpoints   {}", self.token_answers.join("; "));
        println!(
            "  crm-sim           {} requests; answered {}",
            self.requests,
            self.answers
                .iter()
                .map(|(s, by)| {
                    let n: u64 = by.values().sum();
                    // The injected faults are spread everywhere; other errors name where they came from.
                    let top = by.iter().max_by_key(|(_, n)| **n).map(|(e, m)| format!(" (most: {m} on {e})")).unwrap_or_default();
                    if ["429", "502", "503", "504"].contains(&s.as_str()) {
                        format!("{s} ×{n}")
                    } else {
                        format!("{s} ×{n}{top}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  throughput        {outcomes} outcomes in {secs:.1} s from the first call produced: {:.0} outcomes/s ({:.0} calls/s); input produced in {produce_s:.1} s",
            outcomes as f64 / secs,
            o.calls as f64 / secs
        );
        println!(
            "  shutdown          {}",
            if unclean.is_empty() { "every service left cleanly on SIGTERM".to_string() } else { format!("unclean: {unclean:?}") }
        );
    }

    /// The checks that failed, each with a sample.
    fn failures(&self, unclean: &[String]) -> Vec<String> {
        let mut failures = vec![];
        let mut fail = |what: &str, n: usize, sample: String| {
            if n > 0 {
                failures.push(format!("{n} {what}, e.g. {sample}"));
            }
        };
        fail("duplicated records", self.duplicates.len(), format!("{:?}", self.duplicates.iter().take(5).collect::<Vec<_>>()));
        fail(
            "people not exactly one person in their CRM",
            self.people_wrong.len(),
            format!("{:?}", self.people_wrong.iter().take(5).collect::<Vec<_>>()),
        );
        fail("lost records", self.lost.len(), format!("{:?}", self.lost.iter().take(5).collect::<Vec<_>>()));
        fail(
            "unexpected records",
            self.unexpected_records.len(),
            format!("{:?}", self.unexpected_records.iter().take(5).collect::<Vec<_>>()),
        );
        fail("unexpected dead letters", self.unexpected_dlq.len(), format!("{:?}", self.unexpected_dlq.iter().take(5).collect::<Vec<_>>()));
        fail(
            "dead letters with the wrong reason",
            self.wrong_reason.len(),
            format!("{:?}", self.wrong_reason.iter().take(5).collect::<Vec<_>>()),
        );
        fail("missing dead letters", self.missing_dlq.len(), format!("{:?}", self.missing_dlq.iter().take(5).collect::<Vec<_>>()));
        fail(
            "records without their write in the audit store",
            self.unaudited.len(),
            format!("{:?}", self.unaudited.iter().take(5).collect::<Vec<_>>()),
        );
        fail("panics", self.panics.len(), format!("{:?}", self.panics.iter().take(3).collect::<Vec<_>>()));
        fail("services that did not leave cleanly on SIGTERM", unclean.len(), format!("{unclean:?}"));
        failures
    }
}

/// What the services' logs say.
#[derive(Default)]
struct Logged {
    /// A panic line from any service's log.
    panics: Vec<String>,
    /// From the writers' logs: writes fenced off before sending,
    lease_lost: usize,
    /// keys claimed again after a lease ran out,
    reclaimed: usize,
    /// and recoveries by why.
    recoveries: BTreeMap<String, usize>,
}

fn read_logs(logs: &Path) -> anyhow::Result<Logged> {
    let mut l = Logged::default();
    let Logged { panics, lease_lost, reclaimed, recoveries } = &mut l;
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            panics.push(format!("{}: {line}", path.display()));
        }
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("writer-")) {
            continue;
        }
        for line in text.lines() {
            if !(line.contains("lease lost") || line.contains("recovering")) {
                continue;
            }
            let line = strip_ansi(line);
            if line.contains("lease lost before sending") {
                *lease_lost += 1;
            } else if line.contains("lease lost before the write went out") {
                *reclaimed += 1;
            } else if line.contains("recovering:") {
                let why = line.split("why=").nth(1).and_then(|w| w.split_whitespace().next()).unwrap_or("?").trim_matches('"').to_string();
                *recoveries.entry(why).or_default() += 1;
            }
        }
    }
    Ok(l)
}

/// " (hubspot 3, zoho 1)" for idempotency keys (`…:<crm>`), or nothing when there are none.
fn by_crm(keys: &[String]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for k in keys {
        *n.entry(k.rsplit(':').next().unwrap_or("")).or_default() += 1;
    }
    format!(" ({})", n.iter().map(|(crm, n)| format!("{crm} {n}")).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_assignment_is_found_through_the_log_colours() {
        let dir = std::env::temp_dir().join(format!("crm-sync-stranded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("w.log");
        let line =
            |n: &str| format!("\u{1b}[2mwriter::runtime\u{1b}[0m partitions assigned \u{1b}[3mpartitions\u{1b}[0m\u{1b}[2m=\u{1b}[0m{n}\n");
        std::fs::write(&log, line("24") + &line("0")).unwrap();
        assert!(stranded(&log));
        std::fs::write(&log, line("0") + &line("12") + "later work\n").unwrap();
        assert!(!stranded(&log));
        std::fs::write(&log, "INFO crm_common::pipeline: partitions rebalanced rebalance=Assign([])\n").unwrap();
        assert!(stranded(&log));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_crm_is_used_and_one_tenant_per_crm_loses_its_permission() {
        let ts = tenants(200, 4);
        for crm in CRMS {
            assert!(ts.iter().any(|t| t.crms.contains(&crm) && t.revoked != Some(crm)), "{crm:?} written");
            assert_eq!(ts.iter().filter(|t| t.revoked == Some(crm)).count(), 1, "{crm:?} revoked once");
            assert!(ts.iter().any(|t| t.activities && t.crms.contains(&crm)), "{crm:?} gets emails and meetings");
        }
        assert!(ts.iter().all(|t| t.revoked.is_none_or(|c| t.crms.contains(&c))));
        assert_eq!(ts.iter().filter(|t| t.bad_token.is_some()).count(), 1);
        assert!(ts.iter().all(|t| !t.activities || (t.revoked.is_none() && t.bad_token.is_none())), "only healthy tenants");
        assert!(tenants(200, 0).iter().all(|t| !t.activities));
    }
}
