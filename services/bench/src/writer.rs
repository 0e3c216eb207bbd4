//! `bench writer --crm <crm>`: one CRM's writer against crm-sim, in two phases.
//!
//! 1. Backlog: `records` write requests queued for `tenants` tenants, each with its own
//!    account at the CRM held to a lowered rate limit (crm-sim and TENANTS_CONFIG agree):
//!    HubSpot's 10-second burst, Zoho's per-minute pace, Pipedrive's 2-second burst;
//!    Salesforce has no rate limit, only the org's daily allowance. Prints records/s, API
//!    calls, records per call, throttles, and budget utilisation: the call rate per tenant
//!    against the limit's rate.
//! 2. Latency under budget: the whole pipeline (normaliser, deduper, writer) with calls
//!    produced to calls.raw at `rate` per second, well inside the limits; p50/p99 from the
//!    produce time on calls.raw to the writer's DONE (its final audit record).

use crate::produce_all;
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::*;
use crm_common::kafka::reader::TopicReader;
use crm_common::kafka::Kafka;
use crm_dev::{sibling_binary, spawn_crm_sim, DevBroker};
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Sim {
    pub(crate) url: String,
    pub(crate) http: reqwest::blocking::Client,
}

impl Sim {
    pub(crate) fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut r = self.http.request(method, format!("{}/admin{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send()?;
        anyhow::ensure!(resp.status().is_success(), "crm-sim admin {path}: {}", resp.status());
        Ok(resp.json().unwrap_or(Value::Null))
    }

    pub(crate) fn account(&self, p: &Profile, name: &str, limited: bool) -> anyhow::Result<()> {
        let mut spec = (p.account)(name);
        if let Some(k) = &p.kind {
            // The kind's object carries the key too, and a contact has the participant's
            // address.
            k.define_key(&mut spec);
            spec["key_fields"] = json!([k.key_spec()]);
            let contacts = spec["objects"].as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
            if let Some(list) = spec["objects"][&contacts].as_array_mut() {
                list.push((k.contact)(PARTICIPANT));
            }
        }
        spec["tokens"] = json!([{"token": format!("tok-{name}"), "kind": "static"}]);
        if limited {
            spec["limits"] = (p.sim_limit)(p.limit);
        }
        self.admin(reqwest::Method::POST, "/accounts", Some(spec)).map(|_| ())
    }

    /// (live records of the profile's kind, counters) of one account.
    pub(crate) fn state(&self, p: &Profile, name: &str) -> anyhow::Result<(u64, Value)> {
        let s = self.admin(reqwest::Method::GET, &format!("/accounts/{}/{name}", p.crm.as_str()), None)?;
        let object = p.kind.as_ref().map_or(p.calls, |k| k.object);
        Ok((s["objects"][object]["live"].as_u64().unwrap_or(0), s["counters"].clone()))
    }
}

/// The lead assignment rule of the bench's Zoho accounts (its id in `KindParts::connection`).
const ZOHO_BENCH_RULE: &str = "5725767000000700001";

/// The participant every email and meeting of the bench has, a contact in each account.
pub(crate) const PARTICIPANT: &str = "jane.doe@customer.example";

/// An email or meeting backlog instead of calls (`--kind`): where the CRM keeps that kind.
pub struct KindParts {
    pub(crate) kind: ActivityKind,
    pub(crate) object: &'static str,
    pub(crate) key_field: &'static str,
    /// The key field's definition where it is a custom field the account must have.
    pub(crate) key_def: Option<fn() -> Value>,
    /// Where the key rides in free text after a marker (Pipedrive's note).
    pub(crate) key_marker: Option<&'static str>,
    pub(crate) contact: fn(&str) -> Value,
    pub(crate) contract: &'static str,
    pub(crate) writes: &'static str,
    /// Custom fields the kind's contract writes besides the key (object → fields), where
    /// the account must have them (the lead contracts' attribution fields).
    pub(crate) fields: Option<fn() -> Value>,
    /// Top-level keys of the account spec the kind needs (Zoho's lead assignment rule).
    pub(crate) account: Option<fn() -> Value>,
    /// Lines the tenants file's connection needs for the kind (the rule's id).
    pub(crate) connection: &'static str,
}

impl KindParts {
    /// Where crm-sim finds the kind's key (its `key_fields` entry).
    pub(crate) fn key_spec(&self) -> Value {
        let mut key = json!({"object": self.object, "field": self.key_field});
        if let Some(m) = self.key_marker {
            key["marker"] = json!(m);
        }
        key
    }

    /// The key's custom field on an account `spec`, where it is one, and the kind's other
    /// custom fields.
    pub(crate) fn define_key(&self, spec: &mut Value) {
        if let Some(def) = self.key_def {
            spec["fields"][self.object] = json!({self.key_field: def()});
        }
        if let (Some(account), Some(spec)) = (self.account, spec.as_object_mut()) {
            spec.extend(account().as_object().cloned().unwrap_or_default());
        }
        if let Some(fields) = self.fields {
            for (object, f) in fields().as_object().cloned().unwrap_or_default() {
                for (name, def) in f.as_object().cloned().unwrap_or_default() {
                    spec["fields"][&object][name] = def;
                }
            }
        }
    }
}

/// The kind's parts at this CRM, where its writer takes the kind.
pub(crate) fn kind_parts(crm: Crm, kind: ActivityKind) -> anyhow::Result<Option<KindParts>> {
    let hubspot_key = || json!({"type": "text", "unique": true});
    let sf_key = || json!({"type": "text", "external_id": true, "unique": true});
    Ok(match (crm, kind) {
        (_, ActivityKind::Call) => None,
        (Crm::Hubspot, ActivityKind::Email) => Some(KindParts {
            kind,
            object: "emails",
            key_field: "crm_sync_key",
            key_def: Some(hubspot_key),
            key_marker: None,
            contact: |e| json!({"firstname": "Jane", "email": e}),
            contract: include_str!("../../../contracts/hubspot.email.toml"),
            fields: None,
            writes: "emails/batch/",
            account: None,
            connection: "",
        }),
        (Crm::Hubspot, ActivityKind::Meeting) => Some(KindParts {
            kind,
            object: "meetings",
            key_field: "crm_sync_key",
            key_def: Some(hubspot_key),
            key_marker: None,
            contact: |e| json!({"firstname": "Jane", "email": e}),
            contract: include_str!("../../../contracts/hubspot.meeting.toml"),
            fields: None,
            writes: "meetings/batch/",
            account: None,
            connection: "",
        }),
        (Crm::Salesforce, ActivityKind::Meeting) => Some(KindParts {
            kind,
            object: "Event",
            key_field: "CrmSyncKey__c",
            key_def: Some(sf_key),
            key_marker: None,
            contact: |e| json!({"LastName": "Doe", "Email": e}),
            contract: include_str!("../../../contracts/salesforce.meeting.toml"),
            fields: None,
            writes: "composite/sobjects",
            account: None,
            connection: "",
        }),
        (Crm::Salesforce, ActivityKind::Email) => Some(KindParts {
            kind,
            object: "Task",
            key_field: "CrmSyncKey__c",
            key_def: Some(sf_key),
            key_marker: None,
            contact: |e| json!({"LastName": "Doe", "Email": e}),
            contract: include_str!("../../../contracts/salesforce.email.toml"),
            fields: None,
            writes: "composite/sobjects",
            account: None,
            connection: "",
        }),
        (Crm::Zoho, ActivityKind::Meeting) => Some(KindParts {
            kind,
            object: "Events",
            key_field: "Crm_Sync_Key",
            key_def: Some(|| json!({"type": "text"})),
            key_marker: None,
            contact: |e| json!({"Last_Name": "Doe", "Email": e}),
            contract: include_str!("../../../contracts/zoho.meeting.toml"),
            fields: None,
            writes: "/Events",
            account: None,
            connection: "",
        }),
        (Crm::Zoho, ActivityKind::Email) => Some(KindParts {
            kind,
            object: "Emails",
            key_field: "original_message_id",
            key_def: None,
            key_marker: None,
            contact: |e| json!({"Last_Name": "Doe", "Email": e}),
            contract: include_str!("../../../contracts/zoho.email.toml"),
            fields: None,
            writes: "associate_email",
            account: None,
            connection: "",
        }),
        (Crm::Pipedrive, ActivityKind::Email | ActivityKind::Meeting) => Some(KindParts {
            kind,
            object: "activities",
            key_field: "note",
            key_def: None,
            key_marker: Some("crm-sync-key:"),
            contact: |e| json!({"name": "Jane Doe", "emails": [{"value": e, "label": "work", "primary": true}]}),
            contract: if kind == ActivityKind::Email {
                include_str!("../../../contracts/pipedrive.email.toml")
            } else {
                include_str!("../../../contracts/pipedrive.meeting.toml")
            },
            fields: None,
            writes: "api/v2/activities",
            account: None,
            connection: "",
        }),
        (Crm::Hubspot, ActivityKind::Lead) => Some(KindParts {
            kind,
            object: "contacts",
            key_field: "email",
            key_def: None,
            key_marker: None,
            contact: |e| json!({"firstname": "Jane", "email": e}),
            contract: include_str!("../../../contracts/hubspot.lead.toml"),
            fields: Some(|| {
                let t = json!({"type": "text"});
                json!({"contacts": {"crm_sync_original_source": t, "crm_sync_original_campaign": t, "crm_sync_latest_source": t,
                                    "crm_sync_latest_campaign": t, "crm_sync_latest_medium": t}})
            }),
            writes: "/objects/contacts",
            account: None,
            connection: "",
        }),
        (Crm::Salesforce, ActivityKind::Lead) => Some(KindParts {
            kind,
            object: "Lead",
            key_field: "Email",
            key_def: None,
            key_marker: None,
            contact: |e| json!({"LastName": "Doe", "Email": e}),
            contract: include_str!("../../../contracts/salesforce.lead.toml"),
            fields: Some(|| {
                let t = json!({"type": "text"});
                let custom = json!({"CrmSyncFirstCampaign__c": t, "CrmSyncLatestSource__c": t, "CrmSyncLatestCampaign__c": t});
                json!({"Lead": custom.clone(), "Contact": custom})
            }),
            writes: "/sobjects/",
            account: None,
            connection: "",
        }),
        (Crm::Zoho, ActivityKind::Lead) => Some(KindParts {
            kind,
            object: "Leads",
            key_field: "Email",
            key_def: None,
            key_marker: None,
            contact: |e| json!({"Last_Name": "Doe", "Email": e}),
            contract: include_str!("../../../contracts/zoho.lead.toml"),
            fields: Some(|| {
                let t = json!({"type": "text"});
                let custom = json!({"Crm_Sync_Original_Source": t, "Crm_Sync_First_Campaign": t, "Crm_Sync_Latest_Source": t,
                                    "Crm_Sync_Latest_Campaign": t});
                json!({"Leads": custom.clone(), "Contacts": custom})
            }),
            writes: "/Leads",
            // The org's lead assignment rule, named by the tenants (Zoho runs none unnamed).
            account: Some(|| json!({"zoho_lead_rules": {ZOHO_BENCH_RULE: "integration@crm-sim.invalid"}})),
            connection: "leads = { assignment_rule = \"5725767000000700001\" }\n",
        }),
        (Crm::Pipedrive, ActivityKind::Lead) => Some(KindParts {
            kind,
            object: "persons",
            key_field: "email",
            key_def: None,
            key_marker: None,
            contact: |e| json!({"name": "Jane Doe", "emails": [{"value": e, "label": "work", "primary": true}]}),
            contract: include_str!("../../../contracts/pipedrive.lead.toml"),
            fields: Some(|| {
                let t = json!({"type": "text"});
                json!({"persons": {"crm_sync_original_source": t, "crm_sync_first_campaign": t, "crm_sync_latest_source": t,
                                   "crm_sync_latest_campaign": t}})
            }),
            writes: "/persons",
            account: None,
            connection: "",
        }),
        (crm, kind) => anyhow::bail!("writer --crm {} does not write {}s yet", crm.as_str(), kind.as_str()),
    })
}

/// What differs between CRMs here.
pub struct Profile {
    /// Some: the backlog is of this kind (emails or meetings), not calls.
    pub(crate) kind: Option<KindParts>,
    pub(crate) crm: Crm,
    /// crm-sim account spec (tokens and limits are added).
    pub(crate) account: fn(&str) -> Value,
    pub(crate) calls: &'static str,
    pub(crate) contract: &'static str,
    /// An owned, restorable field and a value a person might give it (the reconcile bench).
    pub(crate) reopen: (&'static str, fn() -> Value),
    /// The permission crm-sim checks on call writes, and a part of the create endpoint's
    /// label (the reliability bench revokes the one and faults the other).
    pub(crate) write_permission: &'static str,
    pub(crate) create_endpoint: &'static str,
    /// The rate limit the backlog runs into: crm-sim's limits and the tenant's.
    pub(crate) sim_limit: fn(u64) -> Value,
    pub(crate) tenant_limit: fn(u64) -> String,
    /// (limit's window in seconds, its name), for utilisation; None: no rate limit.
    pub(crate) window: Option<(f64, &'static str)>,
    /// Counter labels of the write calls, and the throttle status.
    pub(crate) writes: &'static str,
    pub(crate) throttle: &'static str,
    pub(crate) limit: u64,
}

fn hubspot() -> Profile {
    Profile {
        kind: None,
        crm: Crm::Hubspot,
        account: |name| {
            json!({"crm": "hubspot", "account": name, "plan": "professional",
                "fields": {"calls": {"crm_sync_key": {"type": "text", "unique": true}}},
                "key_field": {"object": "calls", "field": "crm_sync_key"},
                "objects": {"contacts": [{"firstname": "Ada", "phone": "(415) 555-2671"}]}})
        },
        calls: "calls",
        contract: include_str!("../../../contracts/hubspot.toml"),
        reopen: ("hs_call_status", || json!("IN_PROGRESS")),
        write_permission: "crm.objects.contacts.write",
        create_endpoint: "batch/create",
        sim_limit: |n| json!({"burst_per_10s": n}),
        tenant_limit: |n| format!("limits = {{ burst_per_10s = {n} }}"),
        window: Some((10.0, "requests / 10 s")),
        writes: "calls/batch/",
        throttle: "429",
        limit: 10,
    }
}

fn salesforce() -> Profile {
    Profile {
        kind: None,
        crm: Crm::Salesforce,
        account: |name| {
            json!({"crm": "salesforce", "account": name, "plan": "enterprise", "seats": 20,
                "fields": {"Task": {"CrmSyncKey__c": {"type": "text", "external_id": true, "unique": true}}},
                "key_field": {"object": "Task", "field": "CrmSyncKey__c"},
                "objects": {"Contact": [{"LastName": "Lovelace", "Phone": "(415) 555-2671"}]}})
        },
        calls: "Task",
        contract: include_str!("../../../contracts/salesforce.toml"),
        reopen: ("Status", || json!("In Progress")),
        write_permission: "Task.edit",
        create_endpoint: "composite/sobjects/Task",
        sim_limit: |n| json!({"daily_requests": n}),
        tenant_limit: |n| format!("limits = {{ daily_api_requests = {n} }}"),
        window: None,
        writes: "composite/sobjects",
        throttle: "403",
        limit: 100_000,
    }
}

fn zoho() -> Profile {
    Profile {
        kind: None,
        crm: Crm::Zoho,
        account: |name| {
            json!({"crm": "zoho", "account": name, "plan": "professional", "seats": 10,
                "fields": {"Calls": {"Crm_Sync_Key": {"type": "text"}}},
                "key_field": {"object": "Calls", "field": "Crm_Sync_Key"},
                "objects": {"Contacts": [{"Last_Name": "Lovelace", "Phone": "(415) 555-2671"}]}})
        },
        calls: "Calls",
        contract: include_str!("../../../contracts/zoho.toml"),
        reopen: ("Call_Duration", || json!("00:01")),
        write_permission: "Calls.create",
        create_endpoint: "POST /zoho/crm/{version}/Calls",
        sim_limit: |n| json!({"per_minute": n}),
        tenant_limit: |n| format!("limits = {{ users = 10, per_minute = {n} }}"),
        window: Some((60.0, "requests / minute")),
        writes: "/Calls",
        throttle: "429",
        limit: 30,
    }
}

fn pipedrive() -> Profile {
    Profile {
        kind: None,
        crm: Crm::Pipedrive,
        account: |name| {
            json!({"crm": "pipedrive", "account": name, "plan": "growth", "seats": 10,
                "key_field": {"object": "activities", "field": "note", "marker": "crm-sync-key:"},
                "objects": {"persons": [{"name": "Ada Lovelace", "phones": [{"value": "(415) 555-2671", "primary": true}]}]}})
        },
        calls: "activities",
        contract: include_str!("../../../contracts/pipedrive.toml"),
        reopen: ("done", || json!(false)),
        write_permission: "activities:full",
        create_endpoint: "POST /pipedrive/api/v2/activities",
        sim_limit: |n| json!({"burst_api_token": n}),
        tenant_limit: |n| format!("limits = {{ seats = 10, burst_per_2s = {n} }}"),
        window: Some((2.0, "requests / 2 s")),
        writes: "activities",
        throttle: "429",
        limit: 10,
    }
}

pub fn profile(crm: Crm) -> Profile {
    match crm {
        Crm::Salesforce => salesforce(),
        Crm::Zoho => zoho(),
        Crm::Pipedrive => pipedrive(),
        _ => hubspot(),
    }
}

fn count(counters: &Value, endpoint_part: &str, status: &str) -> u64 {
    counters
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.contains(endpoint_part)).map(|(_, v)| v[status].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

pub(crate) fn all_throttled(counters: &Value, status: &str) -> u64 {
    counters.as_object().map(|m| m.values().map(|v| v[status].as_u64().unwrap_or(0)).sum()).unwrap_or(0)
}

pub(crate) fn request(crm: Crm, tenant: &str, i: usize) -> CrmWriteRequest {
    let call = format!("b{i}");
    let mut c = fixtures::normalised_call(tenant, &call, 2);
    c.customer_e164 = "+14155552671".into();
    // A call of the last hour: the claim store remembers its era, so it is created without
    // a lookup first. (The fixture's fixed start fell out of the claims' retention as the
    // calendar moved on, and every call was looked up before its create.)
    let start = crm_common::clock::now_ms() / 1000 * 1000 - 3_600_000;
    c.started_at = start;
    c.ended_at = Some(start + 60_000);
    CrmWriteRequest {
        tenant_id: tenant.into(),
        call_id: call.clone(),
        crm,
        idempotency_key: idempotency_key(tenant, &call, crm),
        version: 2,
        call: c,
        requested_at: 0,
        trace_id: format!("{:032x}", i + 1),
    }
}

/// A backlog email or meeting (`kind`) for `tenant`: sent or starting within the last hour
/// (the claim store remembers it), with the one participant every account has as a contact.
fn activity_request(crm: Crm, kind: ActivityKind, tenant: &str, i: usize) -> ActivityWriteRequest {
    let now = crm_common::clock::now_ms() / 1000 * 1000;
    let mut r = match kind {
        ActivityKind::Email => fixtures::email_request(tenant, &format!("b{i}"), crm),
        _ => fixtures::meeting_request(tenant, &format!("b{i}"), crm),
    };
    if let Some(e) = r.email.as_mut() {
        e.sent_at = now - 3_600_000;
        e.participants = vec![PARTICIPANT.into()];
    }
    if let Some(m) = r.meeting.as_mut() {
        // A meeting as most are: confirmed, its first version.
        m.status = crm_common::events::MeetingStatus::Confirmed;
        m.version = 1;
        m.start_at = now - 3_600_000;
        m.end_at = now - 1_800_000;
        m.participants = vec![PARTICIPANT.into()];
    }
    r.version = r.meeting.as_ref().map_or(r.version, |m| m.version);
    // As the deduper sends it: now.
    r.requested_at = now;
    r.trace_id = format!("{:032x}", i + 1);
    r
}

pub(crate) struct Killed(pub(crate) Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// The dev broker with every topic, and crm-sim (stopped when the guard drops).
pub(crate) fn broker_and_sim() -> anyhow::Result<(DevBroker, Sim, Killed)> {
    let broker = DevBroker::start(1, 6, &Topics::default().all())?;
    let (url, sim_child) = spawn_crm_sim(&sibling_binary("crm-sim")?, None, true)?;
    Ok((broker, Sim { url, http: reqwest::blocking::Client::new() }, Killed(vec![sim_child])))
}

/// `bench writer`: a limit-bound backlog, then calls.raw → CRM latency through the whole
/// pipeline.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The CRM whose writer runs.
    #[arg(long, default_value = "hubspot")]
    pub crm: Crm,
    /// Backlog write requests (default: 12000; 1200 for Pipedrive, one request each).
    #[arg(long)]
    pub records: Option<usize>,
    /// The backlog's kind: call, or email or meeting where the CRM's writer takes them
    /// (HubSpot: both; Salesforce: meetings), or lead (HubSpot, Salesforce: three rounds of
    /// `--records` leads, default 200: new people, the same again, people the CRM has;
    /// see leads.rs). Phase 2 runs for calls only.
    #[arg(long, default_value = "call")]
    pub kind: ActivityKind,
    #[arg(long, default_value_t = 4)]
    pub tenants: usize,
    /// Each backlog tenant's rate limit: HubSpot requests per 10 s (default 10), Zoho per
    /// minute (30), Pipedrive per 2 s (10), Salesforce requests per 24 h (100000).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Phase 2: calls per second produced to calls.raw.
    #[arg(long, default_value_t = 40)]
    pub rate: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: usize,
    /// Writer replicas working the backlog, sharing each tenant's buckets in Redis.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Phase 2 with the services' consumers at this fetch.wait.max.ms instead of their own
    /// default; either way it runs beside librdkafka's default (500 ms, the old setting).
    #[arg(long)]
    pub fetch_wait_ms: Option<u64>,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Phase 2 runs the audit-sink too, into a database of its own created here (and dropped
    /// after), so that every service's memory at steady load is measured.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Phase 1: crm-sim counts each backlog tenant's request when it arrives and answers it
    /// this many ms later (a real CRM's processing and the way back; crm-sim itself answers
    /// at once). A token comes back one window after the answer, so this is what the
    /// limit's pace loses to a round trip.
    #[arg(long, default_value_t = 0)]
    pub crm_latency_ms: u64,
    /// Timeline on: each backlog account has the agents as CRM users and its contact a
    /// company and an open deal, and calls come from 5 agents; the backlog then runs a
    /// second time with the writer's caches warm. Prints owner and context lookups per 100
    /// records, cold and warm, beside records/s and the limit's pace.
    #[arg(long)]
    pub timeline: bool,
}

/// Agents the timeline backlog's calls come from, each a CRM user of every account.
const AGENTS: usize = 5;

/// Parts of the counter labels of owner and context lookups at each CRM (Salesforce's are
/// its SOQL queries: the backlog's writes use none otherwise).
fn lookup_endpoints(crm: Crm) -> &'static [&'static str] {
    match crm {
        Crm::Hubspot => &["/owners", "/associations/", "deals/batch/read"],
        Crm::Salesforce => &["/query"],
        Crm::Zoho => &["/users", "/coql"],
        _ => &["/users/find", "/persons/{id}", "/deals"],
    }
}

/// Whether a request to `endpoint` (a crm-sim counter's label) spends the limit the backlog
/// is held to: not a token refresh, nor a HubSpot search (it has its own limit, per second).
pub(crate) fn paced(crm: Crm, endpoint: &str) -> bool {
    let own_limit = crm == Crm::Hubspot && endpoint.contains("/search");
    !(endpoint.contains("oauth") || own_limit)
}

/// Lookups (owners and context) in an account's counters.
fn lookups(crm: Crm, counters: &Value) -> u64 {
    counters.as_object().map_or(0, |m| {
        m.iter()
            .filter(|(label, _)| lookup_endpoints(crm).iter().any(|e| label.contains(e)))
            .flat_map(|(_, by_status)| by_status.as_object().into_iter().flat_map(|s| s.values()))
            .map(|n| n.as_u64().unwrap_or(0))
            .sum()
    })
}

/// Seeds a backlog account for the timeline: the agents as users, a company and an open
/// deal for its contact (crm_dev::seed, as the tests make them).
fn seed_timeline(sim: &Sim, crm: Crm, account: &str) -> anyhow::Result<()> {
    use crm_dev::seed;
    let base = format!("/accounts/{}/{account}", crm.as_str());
    for j in 0..AGENTS {
        let user = seed::user(crm, &format!("Agent {j}"), &format!("agent{j}@bench.example"), true);
        sim.admin(reqwest::Method::POST, &format!("{base}/objects/{}", seed::users_table(crm)), Some(user))?;
    }
    let contacts = match crm {
        Crm::Hubspot => "contacts",
        Crm::Salesforce => "Contact",
        Crm::Zoho => "Contacts",
        _ => "persons",
    };
    let list = sim.admin(reqwest::Method::GET, &format!("{base}/objects/{contacts}?deleted=false"), None)?;
    let contact = list["records"][0]["id"].as_str().ok_or_else(|| anyhow::anyhow!("{account} has no contact"))?.to_string();
    let (table, fields) = seed::company(crm, "Customer Co");
    let company =
        sim.admin(reqwest::Method::POST, &format!("{base}/objects/{table}"), Some(fields))?["id"].as_str().unwrap_or_default().to_string();
    match seed::company_link(crm, &contact, &company) {
        seed::CompanyLink::Link(l) => sim.admin(reqwest::Method::POST, &format!("{base}/links"), Some(l))?,
        seed::CompanyLink::Fields(f) => sim.admin(reqwest::Method::PATCH, &format!("{base}/objects/{contacts}/{contact}"), Some(f))?,
    };
    let deal = seed::deal(crm, "Renewal", &contact, &company, true);
    let deal = sim.admin(reqwest::Method::POST, &format!("{base}/objects/{}", seed::deals_table(crm)), Some(deal))?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some((path, body)) = seed::deal_link(crm, &contact, &deal) {
        sim.admin(reqwest::Method::POST, &format!("{base}/{path}"), Some(body))?;
    }
    Ok(())
}

/// What the run set up: the broker, crm-sim, the tenants, and how to start a service.
pub(crate) struct Setup {
    pub(crate) broker: DevBroker,
    pub(crate) sim: Sim,
    children: Killed,
    /// The pipeline's services, stopped and started again between latency rounds.
    stages: Killed,
    /// KAFKA_OPTIONS for the services started next, if any.
    kafka_options: Option<String>,
    pub(crate) backlog: Vec<String>,
    live: Vec<String>,
    dir: std::path::PathBuf,
    tenants_file: std::path::PathBuf,
    secrets: Vec<(String, String)>,
    prefix: String,
    /// The audit-sink's database (phase 2).
    audit_db: Option<String>,
}

impl Setup {
    /// One service, configured like the others (the tenants, Redis, the broker).
    pub(crate) fn spawn(&mut self, bin: &str, args: &[&str], a: &Args) -> anyhow::Result<u32> {
        let mut cmd = Command::new(sibling_binary(bin)?);
        if let Some(options) = &self.kafka_options {
            cmd.env("KAFKA_OPTIONS", options);
        }
        let env = ServiceEnv {
            broker: &self.broker,
            tenants_file: &self.tenants_file,
            dir: &self.dir,
            redis_url: &a.redis_url,
            prefix: &self.prefix,
        };
        env.apply(&mut cmd, &self.secrets);
        if let Some(url) = &self.audit_db {
            cmd.env("DATABASE_URL", url);
        }
        // `BENCH_LOG_DIR`: each service logs there, at `BENCH_RUST_LOG` (default "warn"), to
        // a file named by its binary and process id, kept after the run (to see where a
        // run's time went).
        cmd.args(args).env("RUST_LOG", std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into())).stdout(Stdio::null());
        let logs = std::env::var_os("BENCH_LOG_DIR").map(std::path::PathBuf::from);
        let log = match &logs {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                let n = self.stages.0.len();
                Some(std::fs::File::create(d.join(format!("{bin}-{n}.log")))?)
            }
            None => None,
        };
        if let Some(f) = log {
            cmd.stderr(f);
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        self.stages.0.push(child);
        Ok(pid)
    }

    /// Stops every service started so far (crm-sim and the broker stay).
    fn stop_stages(&mut self) {
        drop(std::mem::replace(&mut self.stages, Killed(vec![])));
    }
}

/// What every service a writer bench starts is told: the broker, the tenants and their
/// secrets, the contracts, Redis and its key prefix, the token key, a short commit interval.
pub(crate) struct ServiceEnv<'a> {
    pub(crate) broker: &'a DevBroker,
    pub(crate) tenants_file: &'a std::path::Path,
    pub(crate) dir: &'a std::path::Path,
    pub(crate) redis_url: &'a str,
    pub(crate) prefix: &'a str,
}

impl ServiceEnv<'_> {
    pub(crate) fn apply(&self, cmd: &mut Command, secrets: &[(String, String)]) {
        cmd.envs(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KAFKA_BOOTSTRAP_SERVERS", self.broker.bootstrap_servers())
            .env("TENANTS_CONFIG", self.tenants_file)
            .env("CONTRACTS_DIR", self.dir.join("contracts"))
            .env("REDIS_URL", self.redis_url)
            .env("REDIS_KEY_PREFIX", self.prefix)
            .env("CRM_SYNC_TOKEN_KEY", crm_dev::DEV_TOKEN_KEY)
            .env("WRITER_COMMIT_INTERVAL", "200ms");
    }
}

/// The broker, crm-sim, a backlog tenant (held to `p.limit`) and a live tenant (its plan's
/// limits) per `tenants`, their config and a fresh claim store.
fn set_up(p: &Profile, a: &Args) -> anyhow::Result<Setup> {
    let crm = p.crm.as_str();
    let (broker, sim, children) = broker_and_sim()?;
    let url = sim.url.clone();
    let dir = std::env::temp_dir().join(format!("crm-sync-bench-writer-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("contracts"))?;
    std::fs::write(dir.join(format!("contracts/{crm}.toml")), p.contract)?;
    let activities = match &p.kind {
        Some(k) => {
            std::fs::write(dir.join(format!("contracts/{crm}.{}.toml", k.kind.as_str())), k.contract)?;
            format!("activities = [\"call\", \"{}\"]\n{}", k.kind.as_str(), k.connection)
        }
        None => String::new(),
    };
    let backlog: Vec<String> = (0..a.tenants).map(|t| format!("bt{t}")).collect();
    let live: Vec<String> = (0..a.tenants).map(|t| format!("lt{t}")).collect();
    let mut config = String::new();
    let mut secrets = vec![];
    let plan = |spec: Value| spec["plan"].as_str().unwrap_or_default().to_string();
    for (t, limited) in backlog.iter().map(|t| (t, true)).chain(live.iter().map(|t| (t, false))) {
        sim.account(p, t, limited)?;
        if limited && a.crm_latency_ms > 0 {
            sim.admin(
                reqwest::Method::POST,
                &format!("/accounts/{crm}/{t}/faults"),
                Some(json!({"kind": "latency", "latency_ms": a.crm_latency_ms})),
            )?;
        }
        if limited && a.timeline {
            seed_timeline(&sim, p.crm, t)?;
        }
        let limits = if limited { (p.tenant_limit)(p.limit) } else { String::new() };
        config += &format!(
            "[tenants.{t}]\ndefault_region = \"US\"\n[tenants.{t}.crms.{crm}]\nplan = \"{}\"\ncredentials_secret = \"TOK_{}\"\nbase_url = \"{url}/{crm}\"\n{activities}{limits}\n",
            plan((p.account)(t)),
            t.to_uppercase()
        );
        secrets.push((format!("TOK_{}", t.to_uppercase()), format!("tok-{t}")));
    }
    let tenants_file = dir.join("tenants.toml");
    std::fs::write(&tenants_file, config)?;
    let prefix = format!("crm-sync-bench-writer-{}", std::process::id());
    crm_dev::fresh_claim_store(&a.redis_url, &prefix, &tenants_file)?;
    Ok(Setup {
        broker,
        sim,
        children,
        stages: Killed(vec![]),
        kafka_options: None,
        backlog,
        live,
        dir,
        tenants_file,
        secrets,
        prefix,
        audit_db: None,
    })
}

pub fn run(p: Profile, a: &Args) -> anyhow::Result<()> {
    let kind = kind_parts(a.crm, a.kind)?;
    let writes = kind.as_ref().map_or(p.writes, |k| k.writes);
    let p = Profile { limit: a.limit.unwrap_or(p.limit), kind, writes, ..p };
    let records = a.records.unwrap_or(if a.crm == Crm::Pipedrive { 1_200 } else { 12_000 });
    let mut setup = set_up(&p, a)?;
    if a.kind == ActivityKind::Lead {
        crate::leads::run(&p, a, a.records.unwrap_or(200), &mut setup)?;
    } else {
        backlog_phase(&p, a, records, &mut setup)?;
    }
    if p.kind.is_none() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let db = format!("crm_sync_bench_writer_{}", std::process::id());
        setup.audit_db = Some(rt.block_on(crm_common::audit_store::create_database(&a.database_url, &db))?);
        let measured = latency_phase(&p, a, &mut setup);
        setup.stop_stages();
        rt.block_on(crm_common::audit_store::drop_database(&a.database_url, &db))?;
        measured?;
    }
    let Setup { children, stages, dir, prefix, .. } = setup;
    drop(stages);
    drop(children);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let conn = rt.block_on(crm_common::redis_conn::connect_node(&a.redis_url))?;
    let removed = rt.block_on(crm_common::redis_conn::delete_prefix(&conn, &prefix))?;
    eprintln!("removed {removed} Redis keys ({prefix}:*)");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub(crate) fn limit_text(p: &Profile) -> String {
    match p.window {
        Some((_, unit)) => format!("{} {unit}", p.limit),
        None => format!("an allowance of {} requests / 24 h", p.limit),
    }
}

/// Phase 1: a backlog, limit-bound: records/s, calls, throttles and the share of the
/// limit's pace used.
/// Queues `records` backlog requests, numbered from `from` (the timeline's calls come from
/// the agents in turn).
fn produce_backlog(p: &Profile, a: &Args, setup: &Setup, records: usize, from: usize) -> anyhow::Result<()> {
    let (tenants, backlog) = (a.tenants, &setup.backlog);
    let kind = p.kind.as_ref().map_or(ActivityKind::Call, |k| k.kind);
    produce_all(&setup.broker.bootstrap_servers(), &Topics::default().crm_writes(p.crm), records, |n| {
        let i = from + n;
        let tenant = &backlog[i % tenants];
        Ok(match kind {
            ActivityKind::Call => {
                let mut r = request(p.crm, tenant, i);
                if a.timeline {
                    let agent = (i / tenants) % AGENTS;
                    r.call.agent_id = format!("agent-{agent}");
                    r.call.agent_email = Some(format!("agent{agent}@bench.example"));
                }
                (tenant.clone(), codec::encode(&r)?)
            }
            kind => (tenant.clone(), codec::encode(&activity_request(p.crm, kind, tenant, i))?),
        })
    })
}

/// Waits until the backlog accounts hold `records` records (or 10 minutes passed): the
/// first record's and the last's times, and how many there are.
fn wait_written(p: &Profile, setup: &Setup, records: usize) -> (Option<Instant>, Instant, u64) {
    let (backlog, sim) = (&setup.backlog, &setup.sim);
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let before: u64 = backlog.iter().map(|t| sim.state(p, t).map(|s| s.0).unwrap_or(0)).sum();
    loop {
        let written: u64 = backlog.iter().map(|t| sim.state(p, t).map(|s| s.0).unwrap_or(0)).sum();
        if written > before && first.is_none() {
            first = Some(Instant::now());
        }
        if written as usize >= records || Instant::now() > deadline {
            return (first, Instant::now(), written);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn backlog_phase(p: &Profile, a: &Args, records: usize, setup: &mut Setup) -> anyhow::Result<()> {
    let (crm, tenants, limit_text) = (p.crm.as_str(), a.tenants, limit_text(p));
    let kind = p.kind.as_ref().map_or(ActivityKind::Call, |k| k.kind);
    let held =
        if a.crm_latency_ms > 0 { format!(", each request answered {} ms after it is counted", a.crm_latency_ms) } else { String::new() };
    eprintln!(
        "phase 1: {records} {crm} {} write requests for {tenants} tenants, each held to {limit_text}{held}, {} writer replicas…",
        kind.as_str(),
        a.replicas.max(1)
    );
    produce_backlog(p, a, setup, records, 0)?;
    for _ in 0..a.replicas.max(1) {
        setup.spawn("writer", &["--crm", crm], a)?;
    }
    let (backlog, sim) = (&setup.backlog, &setup.sim);
    // Each tenant's own span too (its first record written to its last): tenants start at
    // different times (the group's partitions are assigned to each replica in turn), and a
    // limit paces each tenant on its own.
    let share = |t: usize| (records / tenants + usize::from(t < records % tenants)) as u64;
    let mut spans: Vec<(Option<Instant>, Option<Instant>)> = vec![(None, None); tenants];
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (done_at, written) = loop {
        let counts: Vec<u64> = backlog.iter().map(|t| sim.state(p, t).map(|s| s.0).unwrap_or(0)).collect();
        let now = Instant::now();
        for (t, (n, span)) in counts.iter().zip(spans.iter_mut()).enumerate() {
            if *n > 0 && span.0.is_none() {
                span.0 = Some(now);
            }
            if *n >= share(t) && span.1.is_none() {
                span.1 = Some(now);
            }
        }
        let written: u64 = counts.iter().sum();
        if written > 0 && first.is_none() {
            first = Some(now);
        }
        if written as usize >= records || Instant::now() > deadline {
            break (Instant::now(), written);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = done_at.duration_since(first.unwrap_or(done_at)).max(Duration::from_millis(1));
    let (mut calls, mut throttled) = (0u64, 0u64);
    let mut all_calls = 0u64;
    let mut per_tenant_calls = Vec::with_capacity(tenants);
    for t in backlog {
        let (_, c) = sim.state(p, t)?;
        calls += count(&c, p.writes, "201") + count(&c, p.writes, "200") + count(&c, p.writes, "207");
        let sum = |paced_only: bool| -> u64 {
            c.as_object().map_or(0, |m| {
                m.iter()
                    .filter(|(endpoint, _)| !paced_only || paced(p.crm, endpoint))
                    .flat_map(|(_, v)| v.as_object().into_iter().flat_map(|s| s.values()))
                    .map(|n| n.as_u64().unwrap_or(0))
                    .sum()
            })
        };
        all_calls += sum(false);
        per_tenant_calls.push(sum(true));
        throttled += all_throttled(&c, p.throttle);
    }
    let cold_lookups: u64 = backlog.iter().map(|t| sim.state(p, t).map(|(_, c)| lookups(p.crm, &c)).unwrap_or(0)).sum();
    let secs = elapsed.as_secs_f64();
    println!(
        "\nbench writer --crm {crm} --kind {}, phase 1 (backlog): {records} records, {tenants} tenants, each held to {limit_text}{held}, {} writer replicas",
        kind.as_str(),
        a.replicas.max(1)
    );
    println!("  written           {written} records in {secs:.1} s: {:.0} records/s", written as f64 / secs);
    println!(
        "  API calls         {calls} writes ({:.1} records per call); {all_calls} requests in all (searches, token refreshes)",
        written as f64 / calls.max(1) as f64
    );
    println!("  throttled ({})   {throttled}", p.throttle);
    match p.window {
        // The limit allows `limit` at once and `limit` more each window after: a perfectly
        // paced client needs (⌈requests / limit⌉ − 1) windows. The run is read against that.
        Some((window, _)) => {
            // The backlog ends with its slowest tenant: the one with the most requests.
            let best_of = |n: u64| ((n as f64 / p.limit as f64).ceil() - 1.0).max(0.0) * window;
            let most = per_tenant_calls.iter().copied().max().unwrap_or(0);
            let best = best_of(most);
            println!(
                "  budget            {} requests per tenant, at most {most} spending the limit, need {best:.0} s at best at {limit_text}; took {secs:.1} s: {:.0}% of the limit's pace \
                 (a token returns one window after its request's answer)",
                all_calls / tenants.max(1) as u64,
                100.0 * best / secs
            );
            // Each tenant from its first record written to its last, against its own best
            // (its first window's requests went before its first record was written).
            let paces: Vec<f64> = spans
                .iter()
                .zip(&per_tenant_calls)
                .filter_map(|((from, to), n)| {
                    Some(100.0 * best_of(*n) / to.as_ref()?.duration_since(*from.as_ref()?).as_secs_f64().max(0.001))
                })
                .collect();
            if !paces.is_empty() {
                let min = paces.iter().copied().fold(f64::INFINITY, f64::min);
                let mean = paces.iter().sum::<f64>() / paces.len() as f64;
                println!(
                    "  per tenant        from its first record written to its last: {mean:.0}% of the limit's pace on average, {min:.0}% the lowest \
                     (the whole run's figure above also holds the tenants' different starts)"
                );
            }
        }
        None => println!(
            "  budget            no rate limit at {crm}: {} of the org's {} daily requests spent per tenant",
            all_calls / tenants as u64,
            p.limit
        ),
    }
    if a.timeline {
        // The same backlog again, new calls from the same agents and contact: the writer's
        // owner and context caches are warm.
        produce_backlog(p, a, setup, records, records)?;
        let (first, done, total) = wait_written(p, setup, 2 * records);
        let warm_secs = done.duration_since(first.unwrap_or(done)).as_secs_f64().max(0.001);
        let all_lookups: u64 = setup.backlog.iter().map(|t| setup.sim.state(p, t).map(|(_, c)| lookups(p.crm, &c)).unwrap_or(0)).sum();
        let warm = all_lookups - cold_lookups;
        let second = total.saturating_sub(written);
        println!(
            "  timeline          owners ({AGENTS} agents, CRM users by email) and company + open deal per record; lookups = {}",
            lookup_endpoints(p.crm).join(", ")
        );
        println!(
            "  lookups, cold     {cold_lookups} requests for {written} records: {:.2} per 100 records",
            100.0 * cold_lookups as f64 / written.max(1) as f64
        );
        println!(
            "  lookups, warm     {warm} requests for {second} more records: {:.2} per 100 records ({:.0} records/s)",
            100.0 * warm as f64 / second.max(1) as f64,
            second as f64 / warm_secs
        );
    }
    Ok(())
}

/// Phase 2: the whole pipeline, under budget: calls.raw → CRM latency, then each service's
/// CPU while idle. Run twice in one go: the anchor with the consumers at librdkafka's
/// default fetch.wait.max.ms (500 ms, the services' setting before they set their own),
/// then with the services' defaults (or `--fetch-wait-ms`).
fn latency_phase(p: &Profile, a: &Args, setup: &mut Setup) -> anyhow::Result<()> {
    let rounds = [
        ("500 (librdkafka's default; before)".to_string(), Some("fetch.wait.max.ms=500".to_string())),
        match a.fetch_wait_ms {
            Some(ms) => (format!("{ms} (--fetch-wait-ms)"), Some(format!("fetch.wait.max.ms={ms}"))),
            None => (format!("{} (the services' default)", crm_common::kafka::CONSUMER_FETCH_WAIT_MS), None),
        },
    ];
    let mut rows = vec![];
    for (round, (label, options)) in rounds.into_iter().enumerate() {
        setup.stop_stages();
        setup.kafka_options = options;
        rows.push((label, latency_round(p, a, setup, round)?));
    }
    let (crm, n) = (p.crm.as_str(), a.rate * a.seconds);
    println!(
        "\nbench writer --crm {crm}, phase 2 (latency under budget): {n} calls at {} /s over {} tenants (plan limits), per round",
        a.rate, a.tenants
    );
    println!(
        "  {:<38} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9}   idle CPU, % of a core: normaliser deduper writer audit-sink",
        "consumers' fetch.wait.max.ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "measured", "throttled"
    );
    for (label, r) in rows {
        println!(
            "  {label:<38} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9}   {:.2} {:.2} {:.2} {:.2}",
            r.p50, r.p90, r.p99, r.max, r.measured, r.throttled, r.idle_cpu[0], r.idle_cpu[1], r.idle_cpu[2], r.idle_cpu[3]
        );
        println!(
            "  {:<38} p99 by hop: to the normaliser's output {} ms, the deduper's {} ms, the CRM write {} ms",
            "", r.hop_p99[0], r.hop_p99[1], r.hop_p99[2]
        );
        println!(
            "  {:<38} peak RSS at steady load, MiB: normaliser {:.1}, deduper {:.1}, writer {:.1}, audit-sink {:.1}",
            "", r.peak_rss_mib[0], r.peak_rss_mib[1], r.peak_rss_mib[2], r.peak_rss_mib[3]
        );
    }
    Ok(())
}

/// What one latency round measured.
struct Round {
    /// p99 of each hop: raw → normalised, → deduped, → written.
    hop_p99: [i64; 3],
    p50: i64,
    p90: i64,
    p99: i64,
    max: i64,
    measured: usize,
    throttled: u64,
    /// normaliser, deduper, writer, audit-sink.
    idle_cpu: [f64; 4],
    /// Each one's peak RSS over the round (steady load under budget, then idle), MiB.
    peak_rss_mib: [f64; 4],
}

fn latency_round(p: &Profile, a: &Args, setup: &mut Setup, round: usize) -> anyhow::Result<Round> {
    let (crm, tenants, rate) = (p.crm.as_str(), a.tenants, a.rate);
    let topics = Topics::default();
    let bootstrap = setup.broker.bootstrap_servers();
    let pids = [
        setup.spawn("normaliser", &[], a)?,
        setup.spawn("deduper", &[], a)?,
        setup.spawn("writer", &["--crm", crm], a)?,
        setup.spawn("audit-sink", &[], a)?,
    ];
    let (live, sim) = (&setup.live, &setup.sim);
    let throttled_before: u64 = live.iter().map(|t| sim.state(p, t).map(|(_, c)| all_throttled(&c, p.throttle)).unwrap_or(0)).sum();
    // The stages' consumer groups settle first (a group whose previous member was stopped
    // can take its session timeout): one call per tenant goes through before measuring.
    // The same producer then sends the measured calls: its metadata is warm by then.
    let producer = Kafka::local(&bootstrap).threaded_producer(&[("linger.ms", "0")])?;
    let warm = warm_up(&producer, &bootstrap, live, round)?;
    eprintln!("phase 2, round {}: the pipeline answered after {:.1} s", round + 1, warm.as_secs_f64());
    let n = rate * a.seconds;
    eprintln!("phase 2, round {}: {n} calls to calls.raw at {rate}/s through normaliser, deduper and writer…", round + 1);
    let mut produced_at: HashMap<String, i64> = HashMap::new();
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let t = &live[i % tenants];
        let ev = CallEvent {
            tenant_id: t.clone(),
            call_id: format!("l{round}-{i}"),
            direction: CallDirection::Inbound,
            from_number: "(415) 555-2671".into(),
            to_number: "+1 650 253 0000".into(),
            started_at: crm_common::clock::now_ms(),
            ..crate::bench_call(i, tenants)
        };
        produced_at.insert(format!("{t}/l{round}-{i}"), crm_common::clock::now_ms());
        let payload = codec::encode(&ev)?;
        producer.send(rdkafka::producer::BaseRecord::to(&topics.calls_raw).key(t).payload(&payload)).map_err(|(e, _)| e)?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))?;
    let reader = TopicReader::new(&Kafka::local(&bootstrap), &[&topics.audit])?;
    let mut latencies: Vec<i64> = vec![];
    // When each stage audited each call: its time in each hop.
    let mut stages: HashMap<String, [i64; 2]> = HashMap::new();
    let mut hops: [Vec<i64>; 3] = Default::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while latencies.len() < n && Instant::now() < deadline {
        for m in reader.read_until(Duration::from_millis(500), |b| b.len() >= 2000) {
            let Ok(a) = codec::decode::<AuditRecord>(m.payload.as_deref().unwrap_or_default()) else { continue };
            let key = format!("{}/{}", a.tenant_id, a.call_id.as_deref().unwrap_or_default());
            let Some(&t0) = produced_at.get(&key) else { continue };
            let seen = stages.entry(key).or_insert([0; 2]);
            match a.stage {
                Stage::Normaliser => seen[0] = a.occurred_at,
                Stage::Deduper => seen[1] = a.occurred_at,
                Stage::Writer if a.operation == "write" && a.outcome == AuditOutcome::Succeeded => {
                    latencies.push(a.occurred_at - t0);
                    if seen[0] > 0 && seen[1] > 0 {
                        hops[0].push(seen[0] - t0);
                        hops[1].push(seen[1] - seen[0]);
                        hops[2].push(a.occurred_at - seen[1]);
                    }
                }
                _ => {}
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0);
    let hop_p99 = hops.map(|mut h| {
        h.sort_unstable();
        h.get(((h.len() as f64 * 0.99) as usize).min(h.len().saturating_sub(1))).copied().unwrap_or(0)
    });
    let throttled: u64 = live.iter().map(|t| sim.state(p, t).map(|(_, c)| all_throttled(&c, p.throttle)).unwrap_or(0)).sum();
    // Idle: nothing left to read; what the consumers' polling alone costs.
    std::thread::sleep(Duration::from_secs(2));
    let idle_cpu = idle_cpu(&pids, Duration::from_secs(10));
    let peak_rss_mib = pids.map(|pid| crate::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
    Ok(Round {
        hop_p99,
        p50: pct(0.5),
        p90: pct(0.9),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or(0),
        measured: latencies.len(),
        throttled: throttled - throttled_before,
        idle_cpu,
        peak_rss_mib,
    })
}

/// Sends one call per tenant through the whole pipeline and waits until each is written:
/// how long that took.
fn warm_up(
    producer: &ThreadedProducer<DefaultProducerContext>,
    bootstrap: &str,
    live: &[String],
    round: usize,
) -> anyhow::Result<Duration> {
    let topics = Topics::default();
    let started = Instant::now();
    for (i, t) in live.iter().enumerate() {
        let ev = CallEvent {
            tenant_id: t.clone(),
            call_id: format!("warm{round}-{i}"),
            to_number: "+1 650 253 0000".into(),
            ..crate::bench_call(i, 1)
        };
        producer.send(rdkafka::producer::BaseRecord::to(&topics.calls_raw).key(t).payload(&codec::encode(&ev)?)).map_err(|(e, _)| e)?;
    }
    rdkafka::producer::Producer::flush(producer, Duration::from_secs(10))?;
    let reader = TopicReader::new(&Kafka::local(bootstrap), &[&topics.audit])?;
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while written < live.len() {
        anyhow::ensure!(Instant::now() < deadline, "the pipeline wrote only {written} of {} warm-up calls in 180 s", live.len());
        for m in reader.read_until(Duration::from_millis(500), |b| b.len() >= 2000) {
            let Ok(a) = codec::decode::<AuditRecord>(m.payload.as_deref().unwrap_or_default()) else { continue };
            let warm = a.call_id.as_deref().is_some_and(|c| c.starts_with(&format!("warm{round}-")));
            if warm && a.stage == Stage::Writer && a.operation == "write" && a.outcome == AuditOutcome::Succeeded {
                written += 1;
            }
        }
    }
    Ok(started.elapsed())
}

/// Each process's CPU (user + system) over `span`, in % of one core.
fn idle_cpu<const N: usize>(pids: &[u32; N], span: Duration) -> [f64; N] {
    let before = pids.map(crate::cpu_seconds);
    std::thread::sleep(span);
    let mut out = [0.0; N];
    for (i, pid) in pids.iter().enumerate() {
        out[i] = 100.0 * (crate::cpu_seconds(*pid) - before[i]).max(0.0) / span.as_secs_f64();
    }
    out
}
