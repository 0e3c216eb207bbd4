//! Timeline integrity, run per CRM (`writer_<crm>.rs` invokes `timeline_suite!`): whose
//! record it is. Each test runs the writer as its own process against the broker, the
//! machine's Redis and crm-sim, and asserts what crm-sim holds (the record's owner), what
//! the audit says (`owner_from`, `owner_id`) and what the DLQ holds.

use super::crm_sim::CrmSim;
use super::writer::wait_for;
use super::writer_suite::{live_ms, outcomes, Case};
use super::{Broker, RedisPrefix, TempFile};
use crm_common::codec;
use crm_common::events::*;
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
        match self.crm {
            Crm::Hubspot => "owners",
            Crm::Salesforce => "User",
            _ => "users",
        }
    }

    /// A CRM user with this address, active or deactivated, as crm-sim's native fields.
    pub fn user(&self, name: &str, email: &str, active: bool) -> Value {
        match self.crm {
            Crm::Hubspot => json!({"email": email, "firstName": name, "lastName": "Rep", "userId": 77, "archived": !active}),
            Crm::Salesforce => json!({"Email": email, "Name": name, "IsActive": active, "UserType": "Standard"}),
            Crm::Zoho => json!({"email": email, "full_name": name, "status": if active { "active" } else { "disabled" }}),
            _ => json!({"email": email, "name": name, "active_flag": active}),
        }
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
        let off = match self.crm {
            Crm::Hubspot => json!({"archived": true}),
            Crm::Salesforce => json!({"IsActive": false}),
            Crm::Zoho => json!({"status": "disabled"}),
            _ => json!({"active_flag": false}),
        };
        sim.admin("PATCH", &format!("/accounts/{}/{account}/objects/{}/{id}", self.name(), self.users()), Some(off));
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
            Crm::Salesforce => "/query",
            Crm::Zoho => "/users",
            _ => "/users/find",
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
    assert!(all.iter().any(|a| a.operation.contains(case.owner_lookup())), "owners were looked up at the CRM");
    let cached = owner_keys(&prefix);
    assert!(cached.iter().any(|k| k.ends_with(":rep@acme.example")), "the lookup is cached: {cached:?}");
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
        fresh.iter().all(|a| !a.operation.contains(case.owner_lookup())),
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
    assert!(!owner_keys(&prefix).iter().any(|k| k.ends_with(":rep@acme.example")), "the cached owner is forgotten");
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

#[macro_export]
macro_rules! timeline_suite {
    ($case:expr) => {
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
