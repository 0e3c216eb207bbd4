//! Timeline integrity, run per CRM (`writer_<crm>.rs` invokes `timeline_suite!`): whose
//! record it is. Each test runs the writer as its own process against the broker, the
//! machine's Redis and crm-sim, and asserts what crm-sim holds (the record's owner), what
//! the audit says (`owner_from`, `owner_id`) and what the DLQ holds.

use super::crm_sim::CrmSim;
use super::writer::wait_for;
use super::writer_suite::{audited_request, live_ms, outcomes, Case};
use super::{Broker, RedisPrefix, TempFile};
use crm_common::codec;
use crm_common::events::*;
use crm_dev::seed;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

impl Case {
    /// The record field holding its owner.
    pub fn owner_field(&self) -> &'static str {
        match self.crm {
            Crm::Hubspot => "hubspot_owner_id",
            Crm::Salesforce => "OwnerId",
            Crm::Zoho => "Owner",
            _ => "owner_id",
        }
    }

    /// The call field that carries its notes and where it came from.
    pub fn body_field(&self) -> &'static str {
        match self.crm {
            Crm::Hubspot => "hs_call_body",
            Crm::Salesforce | Crm::Zoho => "Description",
            _ => "note",
        }
    }

    /// crm-sim's table of the account's users (owners).
    pub fn users(&self) -> &'static str {
        seed::users_table(self.crm)
    }

    /// A CRM user with this address, active or deactivated, as crm-sim's native fields.
    pub fn user(&self, name: &str, email: &str, active: bool) -> Value {
        seed::user(self.crm, name, email, active)
    }

    /// Adds a user to the account; its id.
    pub fn add_user(&self, sim: &CrmSim, account: &str, name: &str, email: &str, active: bool) -> String {
        let r = sim.admin(
            "POST",
            &format!("/accounts/{}/{account}/objects/{}", self.name(), self.users()),
            Some(self.user(name, email, active)),
        );
        r["id"].as_str().unwrap().to_string()
    }

    /// A person deactivates the user in the CRM.
    pub fn deactivate_user(&self, sim: &CrmSim, account: &str, id: &str) {
        sim.admin(
            "PATCH",
            &format!("/accounts/{}/{account}/objects/{}/{id}", self.name(), self.users()),
            Some(seed::deactivated(self.crm)),
        );
    }

    /// A record's owner as its CRM holds it (a string, a number, or a lookup's id).
    pub fn owner_of(&self, record: &Value) -> Option<String> {
        match &record["fields"][self.owner_field()] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    }

    /// The owner field set to `id` the way a person's edit in the CRM stores it.
    pub fn owner_value(&self, id: &str) -> Value {
        match self.crm {
            Crm::Zoho => json!({"id": id, "name": "Reassigned"}),
            Crm::Pipedrive => json!(id.parse::<u64>().unwrap()),
            _ => json!(id),
        }
    }

    /// A call write request made by this agent.
    pub fn request_by(&self, tenant: &str, call: &str, version: i64, agent: &str, email: Option<&str>) -> super::Msg {
        let (_, bytes, headers) = self.request(tenant, call, version);
        let mut r: CrmWriteRequest = codec::decode(&bytes).unwrap();
        r.call.agent_id = agent.into();
        r.call.agent_email = email.map(Into::into);
        (tenant.into(), codec::encode(&r).unwrap(), headers)
    }

    /// The part of an audited operation that is an owner lookup at this CRM.
    pub fn owner_lookup(&self) -> &'static str {
        match self.crm {
            Crm::Hubspot => "/crm/v3/owners",
            Crm::Salesforce => "FROM User WHERE Email",
            Crm::Zoho => "/users",
            _ => "/users/find",
        }
    }

    /// The part of an audited operation that reads a contact's company and deals at this CRM.
    pub fn context_lookup(&self) -> &'static str {
        match self.crm {
            Crm::Hubspot => "/associations/contacts/",
            Crm::Salesforce => "FROM Contact WHERE Id IN",
            Crm::Zoho => "from Contacts where id in",
            _ => "/api/v2/persons/",
        }
    }
}

impl Case {
    /// A company (account, organisation) a person made in the CRM; its id.
    pub fn add_company(&self, sim: &CrmSim, account: &str, name: &str) -> String {
        let (object, fields) = seed::company(self.crm, name);
        sim.admin("POST", &format!("/accounts/{}/{account}/objects/{object}", self.name()), Some(fields))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Makes `company` the contact's (primary) company, as a person would.
    pub fn set_company(&self, sim: &CrmSim, account: &str, contact: &str, company: &str) {
        match seed::company_link(self.crm, contact, company) {
            seed::CompanyLink::Link(l) => {
                sim.admin("POST", &format!("/accounts/{}/{account}/links", self.name()), Some(l));
            }
            seed::CompanyLink::Fields(f) => self.patch(sim, account, self.contacts, contact, f),
        }
    }

    fn patch(&self, sim: &CrmSim, account: &str, object: &str, id: &str, fields: Value) {
        sim.admin("PATCH", &format!("/accounts/{}/{account}/objects/{object}/{id}", self.name()), Some(fields));
    }

    fn deals(&self) -> &'static str {
        seed::deals_table(self.crm)
    }

    /// A deal of the contact's, at the company, open or closed; its id.
    pub fn add_deal(&self, sim: &CrmSim, account: &str, name: &str, contact: &str, company: &str, open: bool) -> String {
        let fields = seed::deal(self.crm, name, contact, company, open);
        let id = sim.admin("POST", &format!("/accounts/{}/{account}/objects/{}", self.name(), self.deals()), Some(fields))["id"]
            .as_str()
            .unwrap()
            .to_string();
        if let Some((path, body)) = seed::deal_link(self.crm, contact, &id) {
            sim.admin("POST", &format!("/accounts/{}/{account}/{path}", self.name()), Some(body));
        }
        self.next_change_apart();
        id
    }

    /// A person closes the deal (won).
    pub fn close_deal(&self, sim: &CrmSim, account: &str, deal: &str) {
        self.patch(sim, account, self.deals(), deal, seed::won(self.crm));
    }

    /// A person edits the deal: it becomes the most recently changed.
    pub fn touch_deal(&self, sim: &CrmSim, account: &str, deal: &str) {
        let fields = match self.crm {
            Crm::Hubspot => json!({"amount": "1200"}),
            Crm::Salesforce => json!({"Amount": 1200}),
            Crm::Zoho => json!({"Amount": 1200}),
            _ => json!({"value": 1200}),
        };
        self.patch(sim, account, self.deals(), deal, fields);
        self.next_change_apart();
    }

    /// Waits until the CRM's modification times tell the next change from the last: "most
    /// recent" must not be a tie (Zoho and Pipedrive keep whole seconds).
    fn next_change_apart(&self) {
        let ms = if matches!(self.crm, Crm::Zoho | Crm::Pipedrive) { 1_100 } else { 20 };
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// A person removes a record's company and deal (HubSpot: the associations; elsewhere
    /// the fields holding them).
    pub fn clear_context(&self, sim: &CrmSim, account: &str, object: &str, record_id: &str, company: &str) {
        match self.crm {
            Crm::Hubspot => {
                sim.admin(
                    "DELETE",
                    &format!("/accounts/hubspot/{account}/links"),
                    Some(json!({"from": [object, record_id], "to": ["companies", company], "type_id": 0})),
                );
            }
            Crm::Salesforce => self.patch(sim, account, object, record_id, json!({"WhatId": null, "AccountId": null})),
            Crm::Zoho => self.patch(sim, account, object, record_id, json!({"What_Id": null, "$se_module": null})),
            _ => self.patch(sim, account, object, record_id, json!({"org_id": null, "deal_id": null})),
        }
    }

    /// The company and the deal a record of `object` is associated with, as its CRM shows
    /// them (Salesforce and Zoho hold one "what": the deal when there is one, whose
    /// account is the record's company).
    pub fn context_of(&self, sim: &CrmSim, account: &str, object: &str, record: &Value) -> (Option<String>, Option<String>) {
        let id = record["id"].as_str().unwrap();
        let text = |v: &Value| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let f = &record["fields"];
        match self.crm {
            Crm::Hubspot => {
                let links =
                    sim.admin("GET", &format!("/accounts/hubspot/{account}/links"), None)["links"].as_array().cloned().unwrap_or_default();
                let to = |table: &str| {
                    links
                        .iter()
                        .find(|l| l["from"] == json!([object, id]) && l["to"][0] == table)
                        .and_then(|l| l["to"][1].as_str())
                        .map(str::to_string)
                };
                (to("companies"), to("deals"))
            }
            Crm::Salesforce => {
                let what = text(&f["WhatId"]);
                let deal = what.clone().filter(|w| w.starts_with("006"));
                (text(&f["AccountId"]), deal)
            }
            Crm::Zoho => {
                let what = text(&f["What_Id"]);
                match f["$se_module"].as_str() {
                    Some("Deals") => {
                        let deal =
                            sim.records("zoho", account, "Deals").into_iter().find(|d| Some(d["id"].as_str().unwrap().to_string()) == what);
                        (deal.and_then(|d| text(&d["fields"]["Account_Name"])), what)
                    }
                    Some("Accounts") => (what, None),
                    _ => (None, None),
                }
            }
            _ => (text(&f["org_id"]), text(&f["deal_id"])),
        }
    }
}

/// A tenant's connection block, with `extra` lines in it.
fn tenant_block(case: &Case, sim: &CrmSim, tenant: &str, extra: &str) -> String {
    format!(
        "[tenants.{tenant}]\ndefault_region = \"US\"\n[tenants.{tenant}.crms.{crm}]\nplan = \"{plan}\"\ncredentials_secret = \"{secret}\"\nbase_url = \"{url}/{crm}\"\n{}\nactivities = [\"call\", \"meeting\"]\n{extra}\n",
        case.tenant_extra,
        crm = case.name(),
        plan = case.plan,
        secret = case.secret(tenant),
        url = sim.url,
    )
}

fn owner_keys(prefix: &RedisPrefix) -> Vec<String> {
    prefix.keys().into_iter().filter(|k| k.contains(":owner:")).collect()
}

/// Actors become owners: by email (case-insensitively, active users only), by the tenant's
/// map (which wins), or, unmapped, as the tenant chose: written under the integration's
/// user and flagged in audit, or dead-lettered ACTOR_UNMAPPED and written with its owner
/// once the tenant maps the actor and the entry is replayed. A meeting's actor (the
/// calendar's user) is resolved the same way. Owners are looked up once and cached: a
/// second batch by the same agents asks the CRM nothing. A person's reassignment in the CRM
/// survives the activity's next version.
pub fn actors_become_owners_by_email_by_map_or_as_the_tenant_chooses(case: &Case) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    case.activity_account(&sim, "acme");
    case.account(&sim, "globex", json!({}));
    let rep = case.add_user(&sim, "acme", "Rep", "rep@acme.example", true);
    let lead = case.add_user(&sim, "acme", "Lead", "lead@acme.example", true);
    let _gone = case.add_user(&sim, "acme", "Gone", "gone@acme.example", false);
    let integration = sim.state(case.name(), "acme")["owner_id"].as_str().unwrap().to_string();
    let globex_rep = case.add_user(&sim, "globex", "Rep", "rep@globex.example", true);
    let mapped = format!("owners = {{ \"agent-map\" = \"{lead}\" }}");
    let text = tenant_block(case, &sim, "acme", &mapped) + &tenant_block(case, &sim, "globex", "on_unmapped_actor = \"dead_letter\"");
    let tenants = TempFile::new("tenants.toml", &text);
    let prefix = RedisPrefix::new("owners");
    let w = case.writer(&broker, &tenants, &prefix, &["acme", "globex"], &[]);

    let start = live_ms() + 86_400_000;
    let (meeting, meeting_key) = case.meeting("acme", "ev1", 1, MeetingStatus::Confirmed, start, &["jane.doe@customer.example"]);
    let inputs = vec![
        // The address as the source wrote it: matched whatever its case.
        case.request_by("acme", "c1", 1, "agent-1", Some("Rep@ACME.example")),
        case.request_by("acme", "c2", 1, "agent-map", Some("rep@acme.example")),
        case.request_by("acme", "c3", 1, "agent-3", Some("nobody@acme.example")),
        case.request_by("acme", "c4", 1, "agent-4", Some("gone@acme.example")),
        case.request_by("acme", "c5", 1, "agent-5", None),
        meeting,
        case.request_by("globex", "g1", 1, "agent-x", Some("stranger@globex.example")),
    ];
    broker.produce(&case.topic(), &inputs);
    let (finals, dlq, all) = outcomes(&broker, inputs.len(), Duration::from_secs(90));
    assert_eq!(finals.len(), inputs.len(), "{finals:?}");
    let by_call: HashMap<String, &AuditRecord> = finals.iter().map(|a| (a.call_id.clone().unwrap(), a)).collect();
    let calls = sim.records(case.name(), "acme", case.calls);
    let owner = |call: &str| case.owner_of(case.record(&calls, call, "acme"));
    assert_eq!(owner("c1"), Some(rep.clone()), "by email, case-insensitively");
    let body = case.record(&calls, "c1", "acme")["fields"][case.body_field()].as_str().unwrap_or_default().to_string();
    assert!(body.contains("Logged by crm-sync from pbx (call c1)"), "the source system and id in the body: {body:?}");
    assert_eq!(by_call["c1"].attributes.get("owner_from").map(String::as_str), Some("email"));
    assert_eq!(by_call["c1"].attributes.get("owner_id"), Some(&rep));
    assert_eq!(owner("c2"), Some(lead.clone()), "the tenant's map wins over the email");
    assert_eq!(by_call["c2"].attributes.get("owner_from").map(String::as_str), Some("tenant_map"));
    for (c, why) in [("c3", "no active"), ("c4", "no active"), ("c5", "gave no email")] {
        let o = owner(c);
        assert!(o.is_none() || o.as_deref() == Some(integration.as_str()), "{c}: the integration's user owns it, not {o:?}");
        let a = by_call[c];
        assert_eq!(a.outcome, AuditOutcome::Succeeded, "{a:?}");
        assert_eq!(a.attributes.get("owner_from").map(String::as_str), Some("integration_user"), "{c} is flagged: {a:?}");
        assert!(a.detail.contains(why), "{c}: {}", a.detail);
    }
    let m = case.record_keyed(&sim, "acme", case.acts().meetings.0, &meeting_key);
    assert_eq!(case.owner_of(&m), Some(rep.clone()), "the calendar's user owns the meeting: {m}");
    // globex holds unmapped actors for review.
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].reason, DlqReason::ActorUnmapped);
    assert!(dlq[0].detail.contains("agent-x") && dlq[0].detail.contains("owners"), "{}", dlq[0].detail);
    assert!(case.keys(&sim, "globex").is_empty(), "nothing written for globex");
    assert!(all.iter().any(|a| audited_request(a).contains(case.owner_lookup())), "owners were looked up at the CRM");
    let cached = owner_keys(&prefix);
    let rep_name = super::redis::cache_key_name("acme", "rep@acme.example");
    assert!(cached.iter().any(|k| k.ends_with(&format!(":{rep_name}"))), "the lookup is cached: {cached:?}");
    assert!(cached.iter().all(|k| !k.contains('@')), "no address in a key name: {cached:?}");
    assert!(all.iter().all(|a| !format!("{a:?}").contains("nobody@acme.example")), "addresses are masked in audit");

    // The same agents again: every owner comes from the cache, the CRM is not asked.
    let again = vec![
        case.request_by("acme", "c6", 1, "agent-1", Some("rep@acme.example")),
        case.request_by("acme", "c7", 1, "agent-3", Some("nobody@acme.example")),
    ];
    broker.produce(&case.topic(), &again);
    let (finals2, _, all2) = outcomes(&broker, inputs.len() + again.len(), Duration::from_secs(60));
    assert_eq!(finals2.len(), inputs.len() + again.len());
    let fresh: Vec<&AuditRecord> = all2.iter().filter(|a| ["c6", "c7"].contains(&a.call_id.as_deref().unwrap_or(""))).collect();
    assert!(
        fresh.iter().all(|a| !audited_request(a).contains(case.owner_lookup())),
        "cached owners are not looked up again: {:?}",
        fresh.iter().map(|a| &a.operation).collect::<Vec<_>>()
    );
    let calls = sim.records(case.name(), "acme", case.calls);
    assert_eq!(case.owner_of(case.record(&calls, "c6", "acme")), Some(rep.clone()));

    // A person reassigns c1; its next version (the call ended) leaves their choice alone.
    let c1 = case.record(&calls, "c1", "acme")["id"].as_str().unwrap().to_string();
    let field = case.owner_field();
    sim.admin(
        "PATCH",
        &format!("/accounts/{}/acme/objects/{}/{c1}", case.name(), case.calls),
        Some(json!({field: case.owner_value(&lead)})),
    );
    broker.produce(&case.topic(), &[case.request_by("acme", "c1", 2, "agent-1", Some("rep@acme.example"))]);
    let total = inputs.len() + again.len() + 1;
    let (finals3, _, _) = outcomes(&broker, total, Duration::from_secs(60));
    assert_eq!(finals3.len(), total);
    let calls = sim.records(case.name(), "acme", case.calls);
    let c1r = case.record(&calls, "c1", "acme");
    let (pf, _, ended) = case.progress_field;
    assert_eq!(c1r["fields"][pf], ended(), "the update was written: {c1r}");
    assert_eq!(case.owner_of(c1r), Some(lead.clone()), "the person's reassignment stands: {c1r}");

    // The rep leaves: their user is deactivated while still cached. The CRM refuses the
    // owner, the write is dead-lettered and the cached owner forgotten; its replay looks the
    // actor up again and, finding no active user, writes under the integration's user.
    case.deactivate_user(&sim, "acme", &rep);
    broker.produce(&case.topic(), &[case.request_by("acme", "c8", 1, "agent-1", Some("rep@acme.example"))]);
    let total = total + 1;
    let (_, dlq5, _) = outcomes(&broker, total, Duration::from_secs(60));
    let refused = dlq5.iter().find(|d| d.call_id.as_deref() == Some("c8")).expect("c8 refused for its owner");
    assert_eq!(refused.reason, DlqReason::Validation, "{refused:?}");
    assert!(refused.detail.contains("forgotten"), "{}", refused.detail);
    assert!(!owner_keys(&prefix).iter().any(|k| k.ends_with(&format!(":{rep_name}"))), "the cached owner is forgotten");
    broker.produce(&case.topic(), &[case.request_by("acme", "c8", 1, "agent-1", Some("rep@acme.example"))]);
    let total = total + 1;
    let (finals5, _, _) = outcomes(&broker, total, Duration::from_secs(60));
    let c8 = finals5.iter().rev().find(|a| a.call_id.as_deref() == Some("c8")).unwrap();
    assert_eq!(c8.outcome, AuditOutcome::Succeeded, "{c8:?}");
    assert_eq!(c8.attributes.get("owner_from").map(String::as_str), Some("integration_user"));
    assert!(w.terminate().success());

    // globex maps the agent; the dead letter is replayed (the same request again) and
    // written under its owner.
    let text = tenant_block(case, &sim, "acme", &mapped)
        + &tenant_block(
            case,
            &sim,
            "globex",
            &format!("on_unmapped_actor = \"dead_letter\"\nowners = {{ \"agent-x\" = \"{globex_rep}\" }}"),
        );
    let tenants = TempFile::new("tenants.toml", &text);
    let w = case.writer(&broker, &tenants, &prefix, &["acme", "globex"], &[]);
    broker.produce(&case.topic(), &[case.request_by("globex", "g1", 1, "agent-x", Some("stranger@globex.example"))]);
    let (finals4, _, _) = outcomes(&broker, total + 1, Duration::from_secs(90));
    let g1 = finals4.iter().rev().find(|a| a.call_id.as_deref() == Some("g1")).expect("g1's final audit");
    assert_eq!(g1.outcome, AuditOutcome::Succeeded, "{g1:?}");
    let g = sim.records(case.name(), "globex", case.calls);
    assert_eq!(case.owner_of(case.record(&g, "g1", "globex")), Some(globex_rep));
    wait_for("offsets committed", Duration::from_secs(20), || broker.committed(&case.group(), &case.topic()) == total as i64 + 1);
    assert!(w.terminate().success());
}

/// A tenant's override of a field's rule takes effect for that tenant only: with the title
/// made `owned`, a person's edit of it is written over by the call's next version, while
/// another tenant's stands (the contract's `fill_if_empty`). An override that would write
/// a field the contract has no value for stops the writer at start, naming tenant, kind and
/// field.
pub fn a_tenants_field_override_takes_effect_and_an_unsafe_one_is_refused(case: &Case) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    case.account(&sim, "acme", json!({}));
    case.account(&sim, "globex", json!({}));
    let title = case.title_field;
    let text = tenant_block(case, &sim, "acme", &format!("fields = {{ call = {{ {title} = \"owned\" }} }}"))
        + &tenant_block(case, &sim, "globex", "");
    let tenants = TempFile::new("tenants.toml", &text);
    let prefix = RedisPrefix::new("overrides");
    let w = case.writer(&broker, &tenants, &prefix, &["acme", "globex"], &[]);
    broker.produce(&case.topic(), &[case.request("acme", "c1", 1), case.request("globex", "c1", 1)]);
    let (finals, dlq, _) = outcomes(&broker, 2, Duration::from_secs(60));
    assert!(dlq.is_empty() && finals.iter().all(|a| a.outcome == AuditOutcome::Succeeded), "{finals:?} {dlq:?}");
    for t in ["acme", "globex"] {
        let records = sim.records(case.name(), t, case.calls);
        let id = case.record(&records, "c1", t)["id"].as_str().unwrap().to_string();
        sim.admin(
            "PATCH",
            &format!("/accounts/{}/{t}/objects/{}/{id}", case.name(), case.calls),
            Some(json!({title: "Renamed by a person"})),
        );
    }
    broker.produce(&case.topic(), &[case.request("acme", "c1", 2), case.request("globex", "c1", 2)]);
    let (finals, _, _) = outcomes(&broker, 4, Duration::from_secs(60));
    assert_eq!(finals.len(), 4);
    let title_of = |t: &str| {
        let records = sim.records(case.name(), t, case.calls);
        let r = case.record(&records, "c1", t).clone();
        let (pf, _, ended) = case.progress_field;
        assert_eq!(r["fields"][pf], ended(), "{t}'s update was written: {r}");
        r["fields"][title].clone()
    };
    assert_eq!(title_of("acme"), json!("Inbound call from +14155552671"), "acme owns its titles: ours again");
    assert_eq!(title_of("globex"), json!("Renamed by a person"), "globex keeps the contract's rule: the person's edit stands");
    assert!(w.terminate().success());

    let bad = tenant_block(case, &sim, "acme", "fields = { call = { not_a_field = \"owned\" } }");
    let tenants = TempFile::new("tenants.toml", &bad);
    let mut w = case.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    wait_for("the writer to refuse its tenants file", Duration::from_secs(30), || !w.alive());
    let status = w.child.wait().unwrap();
    assert!(!status.success());
    let log = w.log_text();
    assert!(
        log.contains("tenant 'acme'") && log.contains("fields.call") && log.contains("not_a_field") && log.contains("override refused"),
        "{log}"
    );
}

/// Company and deal context, by each tenant's `deal_rule`: acme (`single_open`, the
/// default) gets the contact's company and its one open deal; once a person closes that deal
/// and two more are open, the next call gets the company and no deal (audited why). globex
/// (`most_recent_open`) gets the deal changed last; initech (`none`) the company alone. A
/// meeting's first matched contact brings its company the same way, and an activity with no
/// contact gets neither.
pub fn activities_carry_company_and_deal_by_the_tenants_rule(case: &Case) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    let mut text = String::new();
    let mut ada: HashMap<&str, String> = HashMap::new();
    let mut company: HashMap<&str, String> = HashMap::new();
    for (t, rule) in [("acme", "single_open"), ("globex", "most_recent_open"), ("initech", "none")] {
        case.activity_account(&sim, t);
        let contact = sim.records(case.name(), t, case.contacts)[0]["id"].as_str().unwrap().to_string();
        let co = case.add_company(&sim, t, "Customer Co");
        case.set_company(&sim, t, &contact, &co);
        text += &tenant_block(case, &sim, t, &format!("deal_rule = \"{rule}\""));
        ada.insert(t, contact);
        company.insert(t, co);
    }
    // acme: one open deal and a lost one; globex: two open, the older edited since; initech:
    // one open.
    let acme_deal = case.add_deal(&sim, "acme", "Renewal", &ada["acme"], &company["acme"], true);
    case.add_deal(&sim, "acme", "Lost", &ada["acme"], &company["acme"], false);
    let globex_old = case.add_deal(&sim, "globex", "Expansion", &ada["globex"], &company["globex"], true);
    let _globex_new = case.add_deal(&sim, "globex", "Upsell", &ada["globex"], &company["globex"], true);
    case.touch_deal(&sim, "globex", &globex_old);
    case.add_deal(&sim, "initech", "Pilot", &ada["initech"], &company["initech"], true);
    let jane = case.contacts_with(&sim, "acme", &["jane.doe@customer.example"])[0].clone();
    case.set_company(&sim, "acme", &jane, &company["acme"]);

    let tenants = TempFile::new("tenants.toml", &text);
    let prefix = RedisPrefix::new("context");
    // Contexts are cached only briefly here: a person's deal change shows at the next batch.
    let w = case.writer(&broker, &tenants, &prefix, &["acme", "globex", "initech"], &[("WRITER_CONTEXT_TTL", "1ms")]);
    let start = live_ms() + 86_400_000;
    let (meeting, meeting_key) = case.meeting("acme", "ev1", 1, MeetingStatus::Confirmed, start, &["jane.doe@customer.example"]);
    let (lonely, lonely_key) = case.meeting("acme", "ev2", 1, MeetingStatus::Confirmed, start, &["nobody@elsewhere.example"]);
    let inputs = vec![case.request("acme", "c1", 1), case.request("globex", "g1", 1), case.request("initech", "i1", 1), meeting, lonely];
    broker.produce(&case.topic(), &inputs);
    let (finals, dlq, _) = outcomes(&broker, inputs.len(), Duration::from_secs(90));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert!(finals.iter().all(|a| a.outcome == AuditOutcome::Succeeded), "{finals:?}");
    let call_context = |t: &str, call: &str| {
        let records = sim.records(case.name(), t, case.calls);
        case.context_of(&sim, t, case.calls, case.record(&records, call, t))
    };
    assert_eq!(call_context("acme", "c1"), (Some(company["acme"].clone()), Some(acme_deal.clone())), "the one open deal");
    assert_eq!(call_context("globex", "g1"), (Some(company["globex"].clone()), Some(globex_old.clone())), "the deal changed last");
    assert_eq!(call_context("initech", "i1"), (Some(company["initech"].clone()), None), "deal_rule none");
    let c1 = finals.iter().find(|a| a.call_id.as_deref() == Some("c1")).unwrap();
    assert_eq!(c1.attributes.get("company_id"), Some(&company["acme"]));
    assert_eq!(c1.attributes.get("deal_id"), Some(&acme_deal));
    let meetings = case.acts().meetings.0;
    let m = case.record_keyed(&sim, "acme", meetings, &meeting_key);
    assert_eq!(case.context_of(&sim, "acme", meetings, &m).0, Some(company["acme"].clone()), "the attendee's company: {m}");
    let lonely = case.record_keyed(&sim, "acme", meetings, &lonely_key);
    assert_eq!(case.context_of(&sim, "acme", meetings, &lonely), (None, None), "no contact, no context");

    // A person wins the deal; two more open. single_open: the company, no deal, and why.
    case.close_deal(&sim, "acme", &acme_deal);
    case.add_deal(&sim, "acme", "Phase 2", &ada["acme"], &company["acme"], true);
    case.add_deal(&sim, "acme", "Phase 3", &ada["acme"], &company["acme"], true);
    broker.produce(&case.topic(), &[case.request("acme", "c2", 1)]);
    let (finals, _, _) = outcomes(&broker, inputs.len() + 1, Duration::from_secs(60));
    assert_eq!(call_context("acme", "c2"), (Some(company["acme"].clone()), None));
    let c2 = finals.iter().find(|a| a.call_id.as_deref() == Some("c2")).unwrap();
    assert!(c2.detail.contains("2 open deals"), "{}", c2.detail);
    assert!(w.terminate().success());
}

/// A contact's company and deals are read from the CRM once and cached under the number that
/// matched the contact (read with the batch's claims, before the contact's id is known): the
/// next call with that number asks the CRM nothing about them. An entry counts only for the
/// contact it names: once the number's entry names another contact (the number came to match
/// someone else), the context is read from the CRM again, not taken from the entry.
pub fn a_contacts_context_is_cached_for_the_contact_it_names(case: &Case) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    case.activity_account(&sim, "acme");
    let ada = sim.records(case.name(), "acme", case.contacts)[0]["id"].as_str().unwrap().to_string();
    let co = case.add_company(&sim, "acme", "Customer Co");
    case.set_company(&sim, "acme", &ada, &co);
    let deal = case.add_deal(&sim, "acme", "Renewal", &ada, &co, true);
    let tenants = TempFile::new("tenants.toml", &tenant_block(case, &sim, "acme", ""));
    let prefix = RedisPrefix::new("context-cache");
    let w = case.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    let call_context = |call: &str| {
        let records = sim.records(case.name(), "acme", case.calls);
        case.context_of(&sim, "acme", case.calls, case.record(&records, call, "acme"))
    };
    let looked_up = |all: &[AuditRecord], call: &str| {
        all.iter().filter(|a| a.call_id.as_deref() == Some(call)).any(|a| audited_request(a).contains(case.context_lookup()))
    };
    let mut produced = 0;
    let mut write = |call: &str| {
        broker.produce(&case.topic(), &[case.request("acme", call, 1)]);
        produced += 1;
        let (finals, dlq, all) = outcomes(&broker, produced, Duration::from_secs(60));
        assert!(dlq.is_empty(), "{dlq:?}");
        assert!(finals.iter().all(|a| a.outcome == AuditOutcome::Succeeded), "{finals:?}");
        all
    };

    let all = write("c1");
    assert_eq!(call_context("c1"), (Some(co.clone()), Some(deal.clone())));
    assert!(looked_up(&all, "c1"), "the first call reads its contact's context: {:?}", all.iter().map(audited_request).collect::<Vec<_>>());
    let entries: Vec<String> = prefix.keys().into_iter().filter(|k| k.contains(":context:")).collect();
    let name = super::redis::cache_key_name("acme", &case.request_customer());
    assert!(!entries.is_empty() && entries.iter().all(|k| k.ends_with(&format!(":{name}"))), "cached under the number's name: {entries:?}");

    let all = write("c2");
    assert_eq!(call_context("c2"), (Some(co.clone()), Some(deal.clone())));
    assert!(
        !looked_up(&all, "c2"),
        "the second call's context comes from the cache: {:?}",
        all.iter().map(audited_request).collect::<Vec<_>>()
    );

    // The number's entry now names someone else: not this contact's context.
    let client = redis::Client::open(super::redis::MACHINE_REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    for k in &entries {
        let other = json!({"contact": format!("{ada}-other"), "company": "not-the-company", "open_deals": []}).to_string();
        redis::cmd("SET").arg(k).arg(other).arg("KEEPTTL").query::<()>(&mut conn).unwrap();
    }
    let all = write("c3");
    assert_eq!(call_context("c3"), (Some(co.clone()), Some(deal.clone())), "the other contact's entry is not used");
    assert!(looked_up(&all, "c3"), "read from the CRM again: {:?}", all.iter().map(audited_request).collect::<Vec<_>>());
    assert!(w.terminate().success());
}

/// The CRM's users cannot be read (the connection lacks `permission`, the users scope):
/// actors count as unmapped, so the tenant's choice holds and the writes go on under the
/// integration's user, the audit saying why; they are not dead-lettered for want of an
/// owner. (Salesforce reads users with the same access as its records: there is no scope of
/// their own to take away, so the case runs for the other CRMs.)
pub fn unreadable_users_leave_actors_unmapped_not_writes_failed(case: &Case, permission: &str) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    case.account(&sim, "acme", json!({}));
    case.add_user(&sim, "acme", "Rep", "rep@acme.example", true);
    sim.admin("POST", &format!("/accounts/{}/acme/permissions/{permission}/revoke", case.name()), None);
    let tenants = TempFile::new("tenants.toml", &tenant_block(case, &sim, "acme", ""));
    let prefix = RedisPrefix::new("no-users");
    let w = case.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    broker.produce(&case.topic(), &[case.request_by("acme", "c1", 1, "agent-1", Some("rep@acme.example"))]);
    let (finals, dlq, _) = outcomes(&broker, 1, Duration::from_secs(60));
    assert!(dlq.is_empty(), "{dlq:?}");
    let c1 = &finals[0];
    assert_eq!(c1.outcome, AuditOutcome::Succeeded, "{c1:?}");
    assert_eq!(c1.attributes.get("owner_from").map(String::as_str), Some("integration_user"));
    assert!(c1.detail.contains("could not be read"), "{}", c1.detail);
    assert_eq!(case.keys(&sim, "acme").len(), 1);
    assert!(w.terminate().success());
}

#[macro_export]
macro_rules! timeline_suite {
    ($case:expr) => {
        #[test]
        fn activities_carry_company_and_deal_by_the_tenants_rule() {
            $crate::timeline_suite::activities_carry_company_and_deal_by_the_tenants_rule(&$case)
        }
        #[test]
        fn a_contacts_context_is_cached_for_the_contact_it_names() {
            $crate::timeline_suite::a_contacts_context_is_cached_for_the_contact_it_names(&$case)
        }
        #[test]
        fn a_tenants_field_override_takes_effect_and_an_unsafe_one_is_refused() {
            $crate::timeline_suite::a_tenants_field_override_takes_effect_and_an_unsafe_one_is_refused(&$case)
        }
        #[test]
        fn actors_become_owners_by_email_by_map_or_as_the_tenant_chooses() {
            $crate::timeline_suite::actors_become_owners_by_email_by_map_or_as_the_tenant_chooses(&$case)
        }
    };
}
