//! The lead tests every CRM writer that takes leads must pass (issue 22), written once and
//! run per CRM (`writer_<crm>.rs` holds `lead_suite!(<LeadCase>)`): leads become people
//! without duplicates or clobbered fields, two sources racing on one new person make one
//! person, an ambiguous match follows the tenant's rule, new people's owners follow the
//! tenant's rule, and a lead without consent writes nothing. Each asserts what crm-sim
//! holds afterwards (people, their fields and owners) and what reached the audit topic and
//! the DLQ. The writer runs as its own process against the dev broker, the machine's Redis
//! and crm-sim.

use super::crm_sim::CrmSim;
use super::writer_suite::{outcomes, Case};
use super::{Broker, RedisPrefix, TempFile};
use crm_common::codec;
use crm_common::events::*;
use serde_json::{json, Value};
use std::time::Duration;

/// What differs between CRMs for leads.
pub struct LeadCase {
    pub case: &'static Case,
    /// crm-sim's tables people live in (contacts, and leads where the CRM keeps them apart)
    /// and the one a new person is created in.
    pub people: &'static [&'static str],
    pub created_in: &'static str,
    /// crm-sim's fault-rule endpoint of a person create.
    pub create_endpoint: &'static str,
    /// The custom fields the lead contract writes, per object, as crm-sim's account spec.
    pub fields: fn() -> Value,
    /// The person's fields, by what they hold: (email, first name, phone, first campaign,
    /// latest campaign, owner).
    pub email: &'static str,
    pub first: &'static str,
    pub phone: &'static str,
    pub first_campaign: &'static str,
    pub latest_campaign: &'static str,
    pub owner: &'static str,
    /// A custom field a tenant maps the lead's `marketing_email` consent to.
    pub consent_field: &'static str,
    /// A user of the CRM (crm-sim's users table) with this address.
    pub user: fn(&str) -> Value,
    /// What every account of the CRM needs for leads besides fields (Zoho: the assignment
    /// rule the tenants name), and the `leads` settings a tenant leaving owners to the CRM
    /// gives (Zoho: that rule's id).
    pub account_extra: fn() -> Value,
    pub crm_owner_settings: &'static str,
    /// A person's value of a field as the writer's contract names it, as crm-sim holds the
    /// person (Pipedrive: lists of addresses and numbers, custom fields by code).
    pub get: fn(&Value, &str) -> Option<String>,
}

impl LeadCase {
    fn name(&self) -> &'static str {
        self.case.name()
    }

    /// `field` of person `p` (see `get`).
    pub fn text(&self, p: &Value, field: &str) -> Option<String> {
        (self.get)(p, field)
    }

    /// The first word of the person's (first) name: a first name, or Pipedrive's full name.
    pub fn first_name(&self, p: &Value) -> Option<String> {
        self.text(p, self.first).and_then(|n| n.split_whitespace().next().map(str::to_string))
    }

    /// An account with the contract's custom fields, the phone contact of the writer suite
    /// (Ada), and `extra`'s keys on top.
    pub fn account(&self, sim: &CrmSim, account: &str, extra: Value) {
        let mut spec = json!({"fields": (self.fields)()});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), (self.account_extra)().as_object()) {
            s.extend(e.clone());
        }
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        // `fields` holds the call key field too (the writer's call contract is loaded).
        self.case.account(sim, account, spec);
    }

    pub fn tenants(&self, sim: &CrmSim, ids: &[&str], leads: &str) -> TempFile {
        let leads = match (leads.contains("owner =") || leads.contains("assignment_rule"), self.crm_owner_settings, leads.is_empty()) {
            (true, ..) | (_, "", _) => leads.to_string(),
            (false, crm, true) => crm.to_string(),
            (false, crm, false) => format!("{leads}, {crm}"),
        };
        let extra = if leads.is_empty() { String::new() } else { format!("leads = {{ {leads} }}") };
        self.case.tenants(sim, ids, &format!("activities = [\"call\", \"lead\"]\n{extra}"))
    }

    /// A lead write request: `lead` as the normaliser made it, changed by `f`.
    pub fn lead(&self, tenant: &str, id: &str, f: impl FnOnce(&mut NormalisedLead)) -> super::Msg {
        let mut r = fixtures::lead_request(tenant, id, self.case.crm);
        let l = r.lead.as_mut().unwrap();
        l.submitted_at = super::writer_suite::live_ms();
        f(l);
        (tenant.into(), codec::encode(&r).unwrap(), vec![])
    }

    /// A person as someone types them into the CRM (crm-sim's admin API), in the table new
    /// people are created in.
    pub fn by_hand(&self, first: &str, email: &str) -> Value {
        match self.case.crm {
            Crm::Hubspot => json!({"firstname": first, "lastname": "Lovelace", "email": email}),
            Crm::Salesforce => json!({"FirstName": first, "LastName": "Lovelace", "Email": email, "Company": "Prospect Ltd"}),
            Crm::Zoho => json!({"First_Name": first, "Last_Name": "Lovelace", "Email": email, "Company": "Prospect Ltd"}),
            _ => json!({"name": format!("{first} Lovelace"), "emails": [{"value": email, "label": "work", "primary": true}]}),
        }
    }

    /// Every person in the account (every people table), as crm-sim holds them.
    pub fn people(&self, sim: &CrmSim, account: &str) -> Vec<Value> {
        self.people.iter().flat_map(|t| sim.records(self.name(), account, t)).collect()
    }

    /// The people with this email (any case).
    pub fn with_email(&self, sim: &CrmSim, account: &str, email: &str) -> Vec<Value> {
        self.people(sim, account).into_iter().filter(|p| self.text(p, self.email).is_some_and(|e| e.eq_ignore_ascii_case(email))).collect()
    }

    /// The ids of the users with these addresses (seeded by `user`).
    pub fn user_ids(&self, sim: &CrmSim, account: &str, emails: &[&str]) -> Vec<String> {
        let users = sim.records(self.name(), account, crm_dev::seed::users_table(self.case.crm));
        emails
            .iter()
            .map(|e| {
                users
                    .iter()
                    .find(|u| u["fields"].to_string().to_lowercase().contains(&format!("\"{e}\"")))
                    .and_then(|u| u["id"].as_str())
                    .unwrap_or_else(|| panic!("no user {e}"))
                    .to_string()
            })
            .collect()
    }
}

/// A field as crm-sim holds it for HubSpot, Salesforce and Zoho: text, or an id plain or as
/// a lookup (`{"id": …}`, Zoho's Owner).
fn plain(p: &Value, field: &str) -> Option<String> {
    let v = &p["fields"][field];
    v.as_str().or(v["id"].as_str()).map(str::to_string)
}

/// A Pipedrive person's field: `email` and `phone` the first of their lists, `owner_id` a
/// number, other names custom fields under their codes.
fn pipedrive_field(p: &Value, field: &str) -> Option<String> {
    let f = &p["fields"];
    let first =
        |list: &str| f[list].as_array().and_then(|l| l.first()).and_then(|e| e["value"].as_str().or(e.as_str())).map(str::to_string);
    match field {
        "email" => first("emails"),
        "phone" => first("phones"),
        "name" => f["name"].as_str().map(str::to_string),
        "owner_id" => f["owner_id"].as_u64().map(|n| n.to_string()).or_else(|| f["owner_id"].as_str().map(str::to_string)),
        custom => f["custom_fields"][crm_sim::pipedrive::persons::field_code(custom)].as_str().map(str::to_string),
    }
}

/// Leads become people: a new address creates one person; a second source's lead of the
/// same person updates them, filling only what they lack and moving the latest touch; a
/// lead with only a phone updates the contact with that number; a replay is a duplicate.
pub fn leads_become_one_person_each_filled_never_clobbered(lc: &LeadCase) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    lc.account(&sim, "acme", json!({}));
    let tenants = lc.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("leads");
    let w = lc.case.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    let before = lc.people(&sim, "acme").len();

    let first = lc.lead("acme", "form-1", |l| {
        l.email = Some("new1@prospect.example".into());
        l.phone_e164 = Some("+14155550101".into());
        l.attribution.utm_campaign = Some("spring".into());
    });
    broker.produce(&lc.case.topic(), std::slice::from_ref(&first));
    let (finals, dlq, _) = outcomes(&broker, 1, Duration::from_secs(60));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].outcome, AuditOutcome::Succeeded, "{:?}", finals[0]);
    assert!(finals[0].detail.contains("created"), "{}", finals[0].detail);
    let made = lc.with_email(&sim, "acme", "new1@prospect.example");
    assert_eq!(made.len(), 1, "one person: {made:?}");
    let person = &made[0];
    assert!(sim.records(lc.name(), "acme", lc.created_in).iter().any(|r| r["id"] == person["id"]), "created as {}", lc.created_in);
    assert_eq!(lc.first_name(person).as_deref(), Some("Jane"));
    assert_eq!(lc.text(person, lc.first_campaign).as_deref(), Some("spring"));
    assert_eq!(lc.text(person, lc.latest_campaign).as_deref(), Some("spring"));
    assert_eq!(finals[0].crm_record_id.as_deref(), person["id"].as_str());
    assert_eq!(
        finals[0].attributes.get("person").map(String::as_str),
        Some(format!("{}:{}", if lc.created_in.starts_with("Lead") { "lead" } else { "contact" }, person["id"].as_str().unwrap()).as_str())
    );

    // Another source's lead of the same person: names and the first touch are theirs now;
    // a phone they have is kept; the latest touch moves.
    let second = lc.lead("acme", "ads-7", |l| {
        l.source = "linkedin-lead-gen".into();
        l.email = Some("new1@prospect.example".into());
        l.first_name = Some("Janet".into());
        l.phone_e164 = Some("+14155550102".into());
        l.attribution.utm_campaign = Some("autumn".into());
    });
    // A lead with only Ada's number: Ada is updated, nobody is created.
    let by_phone = lc.lead("acme", "webinar-3", |l| {
        l.email = None;
        l.first_name = Some("Adele".into());
        l.phone_e164 = Some("+14155552671".into());
        l.attribution.utm_campaign = Some("webinar".into());
    });
    broker.produce(&lc.case.topic(), &[second, by_phone, first]);
    let (finals, dlq, all) = outcomes(&broker, 4, Duration::from_secs(60));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(finals.len(), 4, "{finals:?}");
    let of = |id: &str| finals.iter().find(|a| a.call_id.as_deref() == Some(id)).unwrap_or_else(|| panic!("no final for {id}: {finals:?}"));
    let ads = of("ads-7");
    assert_eq!(ads.outcome, AuditOutcome::Succeeded, "{ads:?}");
    assert!(ads.detail.contains("updated") && ads.detail.contains("kept (the CRM has a value):"), "{}", ads.detail);
    assert!(ads.detail.contains(lc.first), "every field's decision is audited: {}", ads.detail);
    assert_eq!(ads.crm_record_id, person["id"].as_str().map(str::to_string), "the same person");
    let now = lc.with_email(&sim, "acme", "new1@prospect.example");
    assert_eq!(now.len(), 1, "still one person: {now:?}");
    assert_eq!(lc.first_name(&now[0]).as_deref(), Some("Jane"), "a name the person has is never overwritten");
    assert_eq!(lc.text(&now[0], lc.first_campaign).as_deref(), Some("spring"), "the first touch is written once");
    assert_eq!(lc.text(&now[0], lc.latest_campaign).as_deref(), Some("autumn"), "the latest touch moves");
    assert!(lc.text(&now[0], lc.phone).is_some_and(|p| p.contains("0101")), "the phone they had is kept: {:?}", now[0]);
    let web = of("webinar-3");
    assert_eq!(web.outcome, AuditOutcome::Succeeded, "{web:?}");
    assert!(web.detail.contains("by phone"), "{}", web.detail);
    let ada = lc.people(&sim, "acme").into_iter().find(|p| lc.first_name(p).as_deref() == Some("Ada")).expect("Ada keeps her name");
    assert_eq!(web.crm_record_id, ada["id"].as_str().map(str::to_string));
    assert_eq!(lc.text(&ada, lc.latest_campaign).as_deref(), Some("webinar"));
    assert_eq!(of("form-1").outcome, AuditOutcome::Succeeded, "the first lead's final is kept");
    let replay = finals.iter().filter(|a| a.call_id.as_deref() == Some("form-1")).count();
    assert_eq!(replay, 2, "the replay has its own final");
    assert!(finals.iter().any(|a| a.call_id.as_deref() == Some("form-1") && a.outcome == AuditOutcome::Duplicate), "{finals:?}");
    assert_eq!(lc.people(&sim, "acme").len(), before + 1, "one person made in all");
    // Every CRM request of a lead is audited with the lead's key.
    assert!(all.iter().any(|a| a.call_id.as_deref() == Some("ads-7") && a.operation != "write"), "the searches and writes are audited");
    assert!(w.terminate().success());
}

/// Two sources submit the same new person at the same moment, and two writers write them
/// at once (each reads its own copy of the write topic, as two replicas do across a
/// rebalance), with a search that shows new people seconds late and creates that take four
/// seconds (so one writer's search runs while the other's create is on its way):
/// one person, each lead written once, every lead but one an update of that person, and no
/// create that met the person. Without the person claim HubSpot refuses the second contact
/// by its unique email, and Salesforce (no duplicate rule) makes a second Lead.
pub fn two_sources_racing_on_one_new_person_make_one_person(lc: &LeadCase) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    lc.account(&sim, "acme", json!({"search_lag_ms": 6000}));
    let tenants = lc.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("leads-race");
    let lag = [("HUBSPOT_SEARCH_LAG", "6s"), ("ZOHO_SEARCH_LAG", "6s")];
    let a = lc.case.writer(&broker, &tenants, &prefix, &["acme"], &[lag[0], lag[1], ("CONSUMER_GROUP", "writer-a")]);
    let b = lc.case.writer(
        &broker,
        &tenants,
        &prefix,
        &["acme"],
        &[lag[0], lag[1], ("CONSUMER_GROUP", "writer-b"), ("TOPIC_CRM_WRITES_PREFIX", "b.crm.writes.")],
    );
    let sources = ["webform", "facebook-lead-ads", "webinar", "g2"];
    let lead = |i: usize| {
        lc.lead("acme", &format!("{}-{i}", sources[i]), |l| {
            l.source = sources[i].to_string();
            l.email = Some("racer@prospect.example".into());
            l.phone_e164 = None;
            l.attribution.utm_campaign = Some(format!("c{i}"));
        })
    };
    // Both writers are up and writing (a lead of someone else each), then two leads to
    // each, at once.
    let warm = |id: &str| {
        lc.lead("acme", id, |l| {
            l.email = Some(format!("{id}@elsewhere.example"));
            l.phone_e164 = None;
        })
    };
    broker.produce(&lc.case.topic(), &[warm("warm-a")]);
    broker.produce(&format!("b.{}", lc.case.topic()), &[warm("warm-b")]);
    let (warmed, _, _) = outcomes(&broker, 2, Duration::from_secs(60));
    assert_eq!(warmed.len(), 2, "{warmed:?}");
    sim.fault(lc.name(), "acme", json!({"kind": "latency", "latency_ms": 4000, "endpoint": lc.create_endpoint}));
    broker.produce(&lc.case.topic(), &[lead(0), lead(2)]);
    broker.produce(&format!("b.{}", lc.case.topic()), &[lead(1), lead(3)]);
    let (finals, dlq, all) = outcomes(&broker, 2 + sources.len(), Duration::from_secs(120));
    let finals: Vec<AuditRecord> = finals.into_iter().filter(|f| !f.call_id.as_deref().unwrap_or_default().starts_with("warm")).collect();
    let all: Vec<AuditRecord> = all.into_iter().filter(|f| !f.call_id.as_deref().unwrap_or_default().starts_with("warm")).collect();
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(finals.len(), sources.len(), "{finals:?}");
    let people = lc.with_email(&sim, "acme", "racer@prospect.example");
    assert_eq!(people.len(), 1, "one person, whatever the race: {people:?}");
    assert!(
        finals.iter().all(|f| f.outcome == AuditOutcome::Succeeded && f.crm_record_id.as_deref() == people[0]["id"].as_str()),
        "{finals:?}"
    );
    let created = finals.iter().filter(|f| f.detail.starts_with("created")).count();
    assert_eq!(created, 1, "one create, the rest updates: {finals:?}");
    let refused: Vec<&AuditRecord> = all.iter().filter(|a| a.outcome != AuditOutcome::Succeeded && a.operation != "write").collect();
    assert!(refused.is_empty(), "no request failed, no create met the person: {refused:?}");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// Several people match a lead (two contacts share its number): a tenant that reviews such
/// leads gets AMBIGUOUS_MATCH with both named and nothing written; the default updates the
/// one changed last.
pub fn an_ambiguous_match_follows_the_tenants_rule(lc: &LeadCase) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    let twins = json!({"objects": {lc.case.contacts: [lc.case.contact_on("Twin", "(415) 555-0199"), lc.case.contact_on("Twain", "(415) 555-0199")]}});
    lc.account(&sim, "acme", twins.clone());
    lc.account(&sim, "globex", twins);
    let acme = lc.tenants(&sim, &["acme"], "on_ambiguous_match = \"dead_letter\"");
    let globex = lc.tenants(&sim, &["globex"], "");
    let both = TempFile::new(
        "tenants.toml",
        &format!("{}\n{}", std::fs::read_to_string(acme.path()).unwrap(), std::fs::read_to_string(globex.path()).unwrap()),
    );
    let prefix = RedisPrefix::new("leads-ambiguous");
    let w = lc.case.writer(&broker, &both, &prefix, &["acme", "globex"], &[]);
    let lead = |t: &str| {
        lc.lead(t, "fair-1", |l| {
            l.email = None;
            l.phone_e164 = Some("+14155550199".into());
            l.attribution.utm_campaign = Some("fair".into());
        })
    };
    broker.produce(&lc.case.topic(), &[lead("acme"), lead("globex")]);
    let (finals, dlq, _) = outcomes(&broker, 2, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!((dlq[0].tenant_id.as_str(), dlq[0].reason, dlq[0].kind), ("acme", DlqReason::AmbiguousMatch, Some(ActivityKind::Lead)));
    assert!(dlq[0].detail.contains("2 people match by phone"), "{}", dlq[0].detail);
    let twins: Vec<String> = lc
        .people(&sim, "acme")
        .iter()
        .filter(|p| lc.first_name(p).is_some_and(|f| f.starts_with("Tw")))
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert!(twins.iter().all(|id| dlq[0].detail.contains(id.as_str())), "both named for review: {}", dlq[0].detail);
    assert!(lc.people(&sim, "acme").iter().all(|p| lc.text(p, lc.latest_campaign).is_none()), "nothing written for acme");
    let g = finals.iter().find(|f| f.tenant_id == "globex").expect("globex's final");
    assert_eq!(g.outcome, AuditOutcome::Succeeded, "{g:?}");
    assert!(g.detail.contains("matched 2 people by phone") && g.detail.contains("most_recently_updated"), "{}", g.detail);
    let touched: Vec<Value> =
        lc.people(&sim, "globex").into_iter().filter(|p| lc.text(p, lc.latest_campaign).as_deref() == Some("fair")).collect();
    assert_eq!(touched.len(), 1, "one of the twins updated, no one created: {touched:?}");
    assert_eq!(g.crm_record_id.as_deref(), touched[0]["id"].as_str());
    assert!(w.terminate().success());
}

/// New people's owners follow the tenant's rule: a round robin takes its users in turn
/// (counted in Redis, shared by replicas); an update leaves the owner alone; consent goes
/// to the fields the tenant maps it to, the latest standing; a lead whose consent says no
/// processing writes nothing and is audited as skipped.
pub fn new_peoples_owners_follow_the_tenants_rule_and_consent_is_kept(lc: &LeadCase) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    let users = json!([(lc.user)("ann@acme.example"), (lc.user)("bob@acme.example")]);
    let mut objects = json!({lc.case.contacts: [lc.case.contact_on("Ada", "(415) 555-2671")]});
    objects[crm_dev::seed::users_table(lc.case.crm)] = users;
    lc.account(&sim, "acme", json!({"objects": objects}));
    let ids = lc.user_ids(&sim, "acme", &["ann@acme.example", "bob@acme.example"]);
    let tenants = lc.tenants(
        &sim,
        &["acme"],
        &format!(
            "owner = {{ round_robin = [\"{}\", \"{}\"] }}, consent_fields = {{ marketing_email = \"{}\" }}",
            ids[0], ids[1], lc.consent_field
        ),
    );
    let prefix = RedisPrefix::new("leads-owners");
    let w = lc.case.writer(&broker, &tenants, &prefix, &["acme"], &[]);
    let mut inputs: Vec<super::Msg> = (0..3)
        .map(|i| {
            lc.lead("acme", &format!("l{i}"), |l| {
                l.email = Some(format!("p{i}@prospect.example"));
                l.phone_e164 = None;
            })
        })
        .collect();
    // An update of p0: no turn spent, the owner kept; their consent withdrawn (the latest
    // consent stands).
    inputs.push(lc.lead("acme", "l9", |l| {
        l.email = Some("p0@prospect.example".into());
        l.phone_e164 = None;
        l.consent.insert("marketing_email".into(), "false".into());
    }));
    inputs.push(lc.lead("acme", "no-consent", |l| {
        l.email = Some("private@prospect.example".into());
        l.consent_to_processing = ConsentState::Denied;
    }));
    broker.produce(&lc.case.topic(), &inputs);
    let (finals, dlq, _) = outcomes(&broker, inputs.len(), Duration::from_secs(60));
    assert!(dlq.is_empty(), "{dlq:?}");
    let owner_of = |email: &str| {
        let p = lc.with_email(&sim, "acme", email);
        assert_eq!(p.len(), 1, "{email}: {p:?}");
        lc.text(&p[0], lc.owner)
    };
    let owners: Vec<Option<String>> = (0..3).map(|i| owner_of(&format!("p{i}@prospect.example"))).collect();
    assert_eq!(owners, [Some(ids[0].clone()), Some(ids[1].clone()), Some(ids[0].clone())], "in turn");
    let consent = |email: &str| lc.with_email(&sim, "acme", email).first().and_then(|p| lc.text(p, lc.consent_field));
    assert_eq!(consent("p1@prospect.example").as_deref(), Some("true"), "the consent goes where the tenant maps it");
    assert_eq!(consent("p0@prospect.example").as_deref(), Some("false"), "and the latest stands");
    let skipped = finals.iter().find(|f| f.call_id.as_deref() == Some("no-consent")).expect("final");
    assert_eq!(skipped.outcome, AuditOutcome::Skipped, "{skipped:?}");
    assert!(skipped.detail.contains("DENIED"), "{}", skipped.detail);
    assert!(lc.with_email(&sim, "acme", "private@prospect.example").is_empty(), "no person for a lead without consent");
    assert!(w.terminate().success());
}

/// Faults on person creates: a timeout and 502s after the create was applied, then 503s
/// and throttles. A create is not replay-safe (nothing of ours makes a second one fail), so
/// one of unknown outcome is not sent again: once it can no longer land, the person is
/// searched for, found and updated, or, not found, created. Every lead is written, one
/// person each, nothing dead-lettered.
pub fn faults_on_person_creates_still_give_one_person_each(lc: &LeadCase) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    lc.account(&sim, "acme", json!({}));
    let tenants = lc.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("leads-faults");
    let ep = lc.create_endpoint;
    sim.fault(lc.name(), "acme", json!({"kind": "timeout", "count": 1, "endpoint": ep, "after_write": true, "latency_ms": 3000}));
    sim.fault(lc.name(), "acme", json!({"kind": "502", "count": 2, "endpoint": ep, "after_write": true}));
    sim.fault(lc.name(), "acme", json!({"kind": "503", "count": 2, "endpoint": ep}));
    sim.fault(lc.name(), "acme", json!({"kind": "429", "count": 1, "endpoint": ep}));
    let w = lc.case.writer(&broker, &tenants, &prefix, &["acme"], &[("WRITER_HTTP_TIMEOUT", "1s"), ("WRITER_RETRY_BASE", "50ms")]);
    let inputs: Vec<super::Msg> = (0..8)
        .map(|i| {
            lc.lead("acme", &format!("f{i}"), |l| {
                l.email = Some(format!("faulty{i}@prospect.example"));
                l.phone_e164 = None;
            })
        })
        .collect();
    broker.produce(&lc.case.topic(), &inputs);
    let (finals, dlq, _) = outcomes(&broker, inputs.len(), Duration::from_secs(120));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(finals.len(), inputs.len(), "{finals:?}");
    assert!(finals.iter().all(|f| f.outcome == AuditOutcome::Succeeded), "{finals:?}");
    for i in 0..inputs.len() {
        let people = lc.with_email(&sim, "acme", &format!("faulty{i}@prospect.example"));
        assert_eq!(people.len(), 1, "faulty{i}: {people:?}");
    }
    let answered = |status: &str| {
        sim.state(lc.name(), "acme")["counters"].as_object().map_or(0, |c| {
            c.iter().filter(|(k, _)| k.contains(ep.trim_end_matches('$'))).map(|(_, v)| v[status].as_u64().unwrap_or(0)).sum::<u64>()
        })
    };
    assert!(answered("502") >= 2 && answered("503") >= 2, "every fault fired");
    assert!(w.terminate().success());
}

/// A writer killed while its person create is in flight, the CRM applying the create after
/// the writer is gone: the next writer finds both claims lapsed, waits until the create can
/// no longer land, finds the person and updates them: one person.
pub fn a_writer_killed_mid_create_leaves_one_person(lc: &LeadCase) {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    lc.account(&sim, "acme", json!({}));
    sim.fault(
        lc.name(),
        "acme",
        json!({"kind": "late_write", "latency_ms": 8000, "apply_after_ms": 2500, "count": 1, "endpoint": lc.create_endpoint}),
    );
    let tenants = lc.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("leads-kill");
    let env = [("WRITER_LEASE", "2s"), ("WRITER_HTTP_TIMEOUT", "10s"), ("WRITER_LATE_WRITE_HORIZON", "4s"), ("WRITER_RETRY_BASE", "50ms")];
    let a = lc.case.writer(&broker, &tenants, &prefix, &["acme"], &env);
    let lead = lc.lead("acme", "k1", |l| {
        l.email = Some("killed@prospect.example".into());
        l.phone_e164 = None;
    });
    broker.produce(&lc.case.topic(), &[lead]);
    sim.wait_in_flight(lc.name(), "acme", 1);
    a.kill9();
    let b = lc.case.writer(&broker, &tenants, &prefix, &["acme"], &env);
    let (finals, dlq, _) = outcomes(&broker, 1, Duration::from_secs(90));
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].outcome, AuditOutcome::Succeeded, "{:?}", finals[0]);
    assert!(finals[0].detail.contains("updated"), "the late create was found, not repeated: {}", finals[0].detail);
    let people = lc.with_email(&sim, "acme", "killed@prospect.example");
    assert_eq!(people.len(), 1, "{people:?}");
    assert_eq!(finals[0].crm_record_id.as_deref(), people[0]["id"].as_str());
    assert!(b.terminate().success());
}

/// One `#[test]` per lead suite function, for a `LeadCase`.
#[macro_export]
macro_rules! lead_suite {
    ($case:expr) => {
        #[test]
        fn leads_become_one_person_each_filled_never_clobbered() {
            $crate::lead_suite::leads_become_one_person_each_filled_never_clobbered(&$case)
        }
        #[test]
        fn two_sources_racing_on_one_new_person_make_one_person() {
            $crate::lead_suite::two_sources_racing_on_one_new_person_make_one_person(&$case)
        }
        #[test]
        fn an_ambiguous_match_follows_the_tenants_rule() {
            $crate::lead_suite::an_ambiguous_match_follows_the_tenants_rule(&$case)
        }
        #[test]
        fn a_writer_killed_mid_create_leaves_one_person() {
            $crate::lead_suite::a_writer_killed_mid_create_leaves_one_person(&$case)
        }
        #[test]
        fn faults_on_person_creates_still_give_one_person_each() {
            $crate::lead_suite::faults_on_person_creates_still_give_one_person_each(&$case)
        }
        #[test]
        fn new_peoples_owners_follow_the_tenants_rule_and_consent_is_kept() {
            $crate::lead_suite::new_peoples_owners_follow_the_tenants_rule_and_consent_is_kept(&$case)
        }
    };
}

pub static HUBSPOT_LEADS: LeadCase = LeadCase {
    case: &super::writer_suite::HUBSPOT,
    people: &["contacts"],
    created_in: "contacts",
    create_endpoint: "POST /hubspot/crm/v3/objects/contacts$",
    fields: || {
        let text = json!({"type": "text"});
        json!({
            "calls": {"crm_sync_key": {"type": "text", "unique": true}},
            "contacts": {
                "crm_sync_original_source": text, "crm_sync_original_campaign": text,
                "crm_sync_latest_source": text, "crm_sync_latest_campaign": text, "crm_sync_latest_medium": text,
                "crm_sync_marketing_email": text
            }
        })
    },
    email: "email",
    first: "firstname",
    phone: "phone",
    first_campaign: "crm_sync_original_campaign",
    latest_campaign: "crm_sync_latest_campaign",
    owner: "hubspot_owner_id",
    consent_field: "crm_sync_marketing_email",
    user: |email| json!({"email": email, "firstName": "A", "lastName": "User"}),
    account_extra: || json!({}),
    crm_owner_settings: "",
    get: plain,
};

pub static SALESFORCE_LEADS: LeadCase = LeadCase {
    case: &super::writer_suite::SALESFORCE,
    people: &["Contact", "Lead"],
    created_in: "Lead",
    create_endpoint: "/sobjects/Lead",
    fields: || {
        let text = json!({"type": "text"});
        let custom = json!({"CrmSyncFirstCampaign__c": text, "CrmSyncLatestSource__c": text, "CrmSyncLatestCampaign__c": text,
                            "CrmSyncMarketingEmail__c": text});
        json!({
            "Task": {"CrmSyncKey__c": {"type": "text", "external_id": true, "unique": true}},
            "Lead": custom.clone(),
            "Contact": custom,
        })
    },
    email: "Email",
    first: "FirstName",
    phone: "Phone",
    first_campaign: "CrmSyncFirstCampaign__c",
    latest_campaign: "CrmSyncLatestCampaign__c",
    owner: "OwnerId",
    consent_field: "CrmSyncMarketingEmail__c",
    user: |email| json!({"Email": email, "Name": "A User", "Username": email, "IsActive": true}),
    account_extra: || json!({}),
    crm_owner_settings: "",
    get: plain,
};

/// The assignment rule Zoho accounts of the lead suite have (it gives leads to the
/// integration's user, the default owner: the suite's owner checks are the tenant's rules;
/// `writer_zoho.rs` checks the rule's own owner).
pub const ZOHO_RULE: &str = "5725767000000700001";

pub static ZOHO_LEADS: LeadCase = LeadCase {
    case: &super::writer_suite::ZOHO,
    people: &["Contacts", "Leads"],
    created_in: "Leads",
    create_endpoint: "POST /zoho/crm/{version}/Leads",
    fields: || {
        let text = json!({"type": "text"});
        let custom = json!({"Crm_Sync_Original_Source": text, "Crm_Sync_First_Campaign": text, "Crm_Sync_Latest_Source": text,
                            "Crm_Sync_Latest_Campaign": text, "Crm_Sync_Marketing_Email": text});
        json!({"Calls": {"Crm_Sync_Key": text}, "Leads": custom.clone(), "Contacts": custom})
    },
    email: "Email",
    first: "First_Name",
    phone: "Phone",
    first_campaign: "Crm_Sync_First_Campaign",
    latest_campaign: "Crm_Sync_Latest_Campaign",
    owner: "Owner",
    consent_field: "Crm_Sync_Marketing_Email",
    user: |email| json!({"email": email, "full_name": "A User", "first_name": "A", "last_name": "User", "status": "active"}),
    account_extra: || json!({"zoho_lead_rules": {ZOHO_RULE: "integration@crm-sim.invalid"}}),
    crm_owner_settings: "assignment_rule = \"5725767000000700001\"",
    get: plain,
};

pub static PIPEDRIVE_LEADS: LeadCase = LeadCase {
    case: &super::writer_suite::PIPEDRIVE,
    people: &["persons"],
    created_in: "persons",
    create_endpoint: "POST /pipedrive/api/v2/persons$",
    fields: || {
        let text = json!({"type": "text"});
        json!({"persons": {"crm_sync_original_source": text, "crm_sync_first_campaign": text, "crm_sync_latest_source": text,
                           "crm_sync_latest_campaign": text, "crm_sync_marketing_email": text}})
    },
    email: "email",
    first: "name",
    phone: "phone",
    first_campaign: "crm_sync_first_campaign",
    latest_campaign: "crm_sync_latest_campaign",
    owner: "owner_id",
    consent_field: "crm_sync_marketing_email",
    user: |email| json!({"email": email, "name": "A User", "active_flag": true, "is_deleted": false}),
    account_extra: || json!({}),
    crm_owner_settings: "",
    get: pipedrive_field,
};
