//! The reconciler and backfill against the real parts: the dev broker, the machine's Redis
//! and PostgreSQL (a database per test), crm-sim over HTTP, and the writer, audit-sink,
//! normaliser and deduper as processes. `crm-sync reconcile` runs a pass as an operator
//! would; its JSON report and what crm-sim holds afterwards are what is checked.

use crm_common::codec;
use crm_common::events::*;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::lead_suite::{LeadCase, HUBSPOT_LEADS, PIPEDRIVE_LEADS, SALESFORCE_LEADS, ZOHO_LEADS};
use crm_sync_tests::postgres::PrivateDb;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::writer_suite::{associated, live_ms, outcomes, Case, HUBSPOT, PIPEDRIVE, SALESFORCE, ZOHO};
use crm_sync_tests::{bin, repo_root, Broker, Proc, RedisPrefix, TempFile, MACHINE_REDIS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const CUSTOMER: &str = "+14155552671";
/// The customer of call c5, whose contact is merged into another.
const MERGED: &str = "+14155550199";

struct Rig {
    broker: Broker,
    sim: CrmSim,
    db: PrivateDb,
    prefix: RedisPrefix,
    tenants: TempFile,
    tenant: String,
    secrets: Vec<(String, String)>,
}

impl Rig {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("KAFKA_BOOTSTRAP_SERVERS".to_string(), self.broker.bootstrap.clone()),
            ("TENANTS_CONFIG".into(), self.tenants.path().into()),
            ("DATABASE_URL".into(), self.db.url.clone()),
            ("REDIS_URL".into(), MACHINE_REDIS.into()),
            ("REDIS_KEY_PREFIX".into(), self.prefix.0.clone()),
            ("CONTRACTS_DIR".into(), repo_root().join("contracts").to_string_lossy().into_owned()),
            ("RECONCILE_SETTLE".into(), "0s".into()),
        ];
        env.extend(self.secrets.iter().cloned());
        env
    }

    /// `crm-sync <args>`: (exit code, stdout).
    fn crm_sync(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(bin("crm-sync")).args(args).envs(self.env()).output().expect("run crm-sync");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("crm-sync {}: {}\n{stdout}\n{stderr}", args.join(" "), out.status);
        (out.status.code().unwrap_or(-1), stdout)
    }

    /// One pass for this rig's tenant and CRM; its parity report.
    fn reconcile(&self, crm: &str) -> Value {
        let (code, out) = self.crm_sync(&["reconcile", "--tenant", &self.tenant, "--crm", crm, "--json"]);
        assert_eq!(code, 0, "reconcile failed");
        let line = out.lines().next().expect("one report line");
        serde_json::from_str(line).expect("report JSON")
    }

    fn sink(&self) -> Proc {
        self.broker.service(
            "audit-sink",
            &[("DATABASE_URL", self.db.url.as_str()), ("PIPELINE_COMMIT_INTERVAL_MS", "100"), ("TENANTS_CONFIG", "/dev/null")],
        )
    }

    /// Successful writes stored by the audit-sink.
    fn stored_writes(&self) -> i64 {
        self.db.count("SELECT count(*) FROM audit WHERE stage = 'WRITER' AND operation = 'write' AND outcome = 'SUCCEEDED'")
    }
}

fn rig(case: &Case, label: &str, tenant_extra: &str) -> Rig {
    let broker = Broker::start(2);
    let sim = CrmSim::start();
    let tenant = format!("{label}-{}", case.name());
    let contacts = json!([
        case.contact_on("Ada", "(415) 555-2671"),
        case.contact_on("Bob", "(415) 555-0199"),
        case.contact_on("Robert", "(415) 555-0198")
    ]);
    case.account(&sim, &tenant, json!({"objects": {case.contacts: contacts}}));
    let prefix = RedisPrefix::new(label);
    let tenants = case.tenants(&sim, &[&tenant], tenant_extra);
    let db = PrivateDb::new(label);
    let secrets = vec![(case.secret(&tenant), case.token(&tenant))];
    Rig { broker, sim, db, prefix, tenants, tenant, secrets }
}

/// A rig for emails and meetings: the account with the activity contacts and key fields,
/// the tenant taking every kind its writer writes.
fn activity_rig(case: &Case, label: &str) -> Rig {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    let tenant = format!("{label}-{}", case.name());
    case.activity_account(&sim, &tenant);
    Rig {
        tenants: case.activity_tenants(&sim, &[&tenant]),
        db: PrivateDb::new(label),
        prefix: RedisPrefix::new(label),
        secrets: vec![(case.secret(&tenant), case.token(&tenant))],
        tenant,
        broker,
        sim,
    }
}

/// A rig for leads: the account with the lead contract's fields and Ada (the writer suite's
/// contact), the tenant taking calls and leads.
fn lead_rig(lc: &LeadCase, label: &str) -> Rig {
    let case = lc.case;
    let tenant = format!("{label}-{}", case.name());
    let sim = CrmSim::start();
    lc.account(&sim, &tenant, json!({}));
    Rig {
        broker: Broker::start(1),
        tenants: lc.tenants(&sim, &[&tenant], ""),
        db: PrivateDb::new(label),
        prefix: RedisPrefix::new(label),
        secrets: vec![(case.secret(&tenant), case.token(&tenant))],
        tenant,
        sim,
    }
}

fn record_of<'a>(case: &Case, records: &'a [Value], call: &str, tenant: &str) -> Option<&'a Value> {
    let key = idempotency_key(tenant, call, case.crm);
    records.iter().find(|r| {
        r["fields"].as_object().is_some_and(|f| f.values().any(|v| v.as_str().is_some_and(|s| s == key || s.ends_with(&format!(":{key}")))))
    })
}

fn dead_letters(broker: &Broker) -> Vec<DeadLetter> {
    broker
        .reader(&["sync.dlq"])
        .read_until(Duration::from_secs(1), |_| false)
        .iter()
        .map(|m| codec::decode::<DeadLetter>(m.payload.as_deref().unwrap()).unwrap())
        .collect()
}

/// Every kind of drift, in one tenant's six calls:
/// c1 an owned, restorable field changed by a person (restored); c2 a fill_if_empty field
/// edited by a person (not drift: left alone); c3 deleted to the recycle bin (dead-lettered,
/// once); c4 purged (re-created through the writer, one live record; at Pipedrive, which
/// cannot tell a purge from a deletion, dead-lettered); c5's contact merged into another
/// (the contact cache follows); c6 untouched. Then a second pass finds parity except the
/// deletions, and a removed key field stops the pass with the field named.
fn every_kind_of_drift(case: &Case) {
    let rig = rig(case, "rc", "");
    let (tenant, crm) = (rig.tenant.as_str(), case.name());
    let _sink = rig.sink();
    let writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[tenant], &[]);
    let calls = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let msgs: Vec<_> = calls.iter().map(|c| case.request_to(tenant, c, 2, if *c == "c5" { MERGED } else { CUSTOMER })).collect();
    rig.broker.produce(&case.topic(), &msgs);
    wait_for("six writes stored", Duration::from_secs(60), || rig.stored_writes() == 6);

    let records = rig.sim.records(crm, tenant, case.calls);
    let id =
        |c: &str| record_of(case, &records, c, tenant).unwrap_or_else(|| panic!("no record for {c}"))["id"].as_str().unwrap().to_string();
    let (field, open, ended) = case.progress_field;
    let admin = |method: &str, path: String, body: Option<Value>| rig.sim.admin(method, &format!("/accounts/{crm}/{tenant}/{path}"), body);
    admin("PATCH", format!("objects/{}/{}", case.calls, id("c1")), Some(json!({ field: open() })));
    admin("PATCH", format!("objects/{}/{}", case.calls, id("c2")), Some(json!({ case.title_field: "Renamed by a person" })));
    admin("DELETE", format!("objects/{}/{}", case.calls, id("c3")), None);
    admin("DELETE", format!("objects/{}/{}?purge=true", case.calls, id("c4")), None);
    let people = rig.sim.records(crm, tenant, case.contacts);
    let person = |first: &str| {
        people.iter().find(|p| p["fields"].to_string().contains(first)).unwrap_or_else(|| panic!("no contact {first}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (bob, robert) = (person("Bob"), person("Robert"));
    admin("POST", format!("objects/{}/{bob}/merge", case.contacts), Some(json!({"into": robert})));

    let r = rig.reconcile(crm);
    let purge_is_missing = case.crm != Crm::Pipedrive;
    assert_eq!(r["checked"], 6, "{r}");
    assert_eq!(r["matching"], 2, "c2 (a fill_if_empty edit) and c6: {r}");
    assert_eq!(r["drifted"], 4, "{r}");
    assert_eq!(r["findings"]["field_changed"], 1, "{r}");
    assert_eq!(r["findings"]["contact_merged"], 1, "{r}");
    if purge_is_missing {
        assert_eq!((r["findings"]["deleted"].as_i64(), r["findings"]["missing"].as_i64()), (Some(1), Some(1)), "{r}");
        assert_eq!((r["repaired"].as_i64(), r["dead_lettered"].as_i64()), (Some(3), Some(1)), "{r}");
    } else {
        assert_eq!(r["findings"]["deleted"], 2, "{r}");
        assert_eq!((r["repaired"].as_i64(), r["dead_lettered"].as_i64()), (Some(2), Some(2)), "{r}");
    }

    // c1 is back to what crm-sync wrote; c2 keeps the person's title.
    let after = rig.sim.records(crm, tenant, case.calls);
    let c1 = record_of(case, &after, "c1", tenant).expect("c1");
    assert!(crm_connectors::contract::same_value(&ended(), &c1["fields"][field]), "c1's {field} restored: {}", c1["fields"][field]);
    assert_eq!(record_of(case, &after, "c2", tenant).expect("c2")["fields"][case.title_field], "Renamed by a person");
    // c3 stays deleted, with a dead letter that says so.
    assert!(record_of(case, &after, "c3", tenant).is_none(), "a deletion someone made is not undone");
    let dl = dead_letters(&rig.broker);
    let c3: Vec<&DeadLetter> = dl.iter().filter(|d| d.call_id.as_deref() == Some("c3")).collect();
    assert_eq!(c3.len(), 1, "{dl:?}");
    assert_eq!((c3[0].stage, c3[0].reason), (Stage::Reconciler, DlqReason::Validation));
    assert!(c3[0].detail.contains("deleted"), "{}", c3[0].detail);
    assert_eq!(c3[0].source_topic, case.topic(), "the entry holds the write request, for replay");
    // c4 comes back through the writer, once.
    if purge_is_missing {
        wait_for("c4 re-created", Duration::from_secs(30), || {
            record_of(case, &rig.sim.records(crm, tenant, case.calls), "c4", tenant).is_some()
        });
        wait_for("the re-created write stored", Duration::from_secs(30), || rig.stored_writes() == 7);
        let keys = case.keys(&rig.sim, tenant);
        assert_eq!(keys[&idempotency_key(tenant, "c4", case.crm)].1, 1, "one live record for c4: {keys:?}");
    }
    // Every finding is audited as the reconciler's.
    wait_for("findings stored", Duration::from_secs(20), || {
        rig.db.count("SELECT count(*) FROM audit WHERE stage = 'RECONCILER' AND outcome IN ('REPAIRED', 'DEAD_LETTERED')") >= 4
    });

    // The second pass: the repairs hold; the deletion is counted, not dead-lettered again.
    let r2 = rig.reconcile(crm);
    assert_eq!(r2["checked"], 6, "{r2}");
    let deletions = if purge_is_missing { 1 } else { 2 };
    assert_eq!(r2["matching"], 6 - deletions, "{r2}");
    assert_eq!(r2["dead_lettered"], deletions, "{r2}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        dead_letters(&rig.broker).iter().filter(|d| d.stage == Stage::Reconciler).count(),
        deletions as usize,
        "no second dead letter"
    );

    // The stored report.
    let (code, table) = rig.crm_sync(&["reconcile", "--report", "--tenant", tenant]);
    assert_eq!(code, 0);
    assert!(table.lines().any(|l| l.starts_with(tenant) && l.contains(crm)), "{table}");

    // A removed key field (Zoho would go on writing without it) is reported and stops the pass.
    if case.crm != Crm::Pipedrive {
        let key_field = crm_connectors::contract::Contract::load(&repo_root().join("contracts"), crm).unwrap().key_field;
        admin("DELETE", format!("fields/{}/{key_field}", case.calls), None);
        let (code, out) = rig.crm_sync(&["reconcile", "--tenant", tenant, "--crm", crm, "--json", "--fail-on-drift"]);
        assert_eq!(code, 3, "drift fails the command: {out}");
        let r3: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(r3["missing_fields"], json!([key_field]), "{r3}");
        assert!(r3["error"].as_str().is_some_and(|e| e.contains(&key_field)), "{r3}");
    }
    drop(writer);
}

/// Emails and meetings are reconciled like calls, each kind on its own object with its own
/// contract: a meeting a person moved is put back (its times are owned and restorable), one
/// a person deleted is dead-lettered as a meeting, an untouched email matches (Zoho's emails
/// hang on a contact's related list and are not read back).
fn meetings_and_emails_drift_per_kind(case: &Case) {
    let a = case.acts();
    let rig = activity_rig(case, "rk");
    let (tenant, crm) = (rig.tenant.as_str(), case.name());
    let _sink = rig.sink();
    let _writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[tenant], &[]);
    let jane = "jane.doe@customer.example";
    let start = live_ms() + 86_400_000;
    let (moved, moved_key) = case.meeting(tenant, "ev1", 1, MeetingStatus::Confirmed, start, &[jane]);
    let (gone, gone_key) = case.meeting(tenant, "ev2", 1, MeetingStatus::Confirmed, start, &[jane]);
    let (email, _) = case.email(tenant, "m1", &[jane], &[]);
    rig.broker.produce(&case.topic(), &[moved, gone, email]);
    wait_for("three writes stored", Duration::from_secs(60), || rig.stored_writes() == 3);

    let (start_field, start_value) = a.meeting_start;
    let id = |key: &str| case.record_keyed(&rig.sim, tenant, a.meetings.0, key)["id"].as_str().unwrap().to_string();
    let admin = |method: &str, path: String, body: Option<Value>| rig.sim.admin(method, &format!("/accounts/{crm}/{tenant}/{path}"), body);
    admin("PATCH", format!("objects/{}/{}", a.meetings.0, id(&moved_key)), Some(json!({ start_field: start_value(start + 3_600_000) })));
    admin("DELETE", format!("objects/{}/{}", a.meetings.0, id(&gone_key)), None);

    let r = rig.reconcile(crm);
    let emails_read = case.crm != Crm::Zoho;
    assert_eq!(r["checked"], 2 + i64::from(emails_read), "two meetings and the email where it is read back: {r}");
    assert_eq!(r["matching"], i64::from(emails_read), "the untouched email: {r}");
    assert_eq!((r["findings"]["field_changed"].as_i64(), r["findings"]["deleted"].as_i64()), (Some(1), Some(1)), "{r}");
    assert_eq!((r["repaired"].as_i64(), r["dead_lettered"].as_i64()), (Some(1), Some(1)), "{r}");
    let after = case.record_keyed(&rig.sim, tenant, a.meetings.0, &moved_key);
    assert_eq!(after["fields"][start_field], start_value(start), "the calendar's time is back: {after}");
    let dl = dead_letters(&rig.broker);
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(
        (dl[0].stage, dl[0].reason, dl[0].kind),
        (Stage::Reconciler, DlqReason::Validation, Some(ActivityKind::Meeting)),
        "{:?}",
        dl[0]
    );
    assert_eq!(dl[0].call_id.as_deref(), Some("ev2@google.com"), "the meeting's own id");
    wait_for("findings stored by kind", Duration::from_secs(20), || {
        rig.db.count(
            "SELECT count(*) FROM audit WHERE stage = 'RECONCILER' AND kind = 'meeting' AND outcome IN ('REPAIRED', 'DEAD_LETTERED')",
        ) >= 2
    });
}

/// Whose record it is, checked by the reconciler: a person reassigns a call written under
/// the agent's CRM user. Under the shipped contracts (the owner `fill_if_empty`) that is
/// their decision: the record matches. A tenant whose override owns the owner
/// (`restorable`) has it reported as a changed field and put back to the agent's user, the
/// one the writer's audit recorded.
fn owner_reassignments_drift_only_where_the_tenant_owns_the_owner(case: &Case) {
    let crm = case.name();
    for owned in [true, false] {
        let extra = if owned {
            format!("fields = {{ call = {{ {} = {{ ownership = \"owned\", restorable = true }} }} }}", case.owner_field())
        } else {
            String::new()
        };
        let rig = rig(case, if owned { "own" } else { "def" }, &extra);
        let tenant = rig.tenant.clone();
        let rep = case.add_user(&rig.sim, &tenant, "Rep", "rep@acme.example", true);
        let lead = case.add_user(&rig.sim, &tenant, "Lead", "lead@acme.example", true);
        // The customer's contact is at a company, so the call is associated with it too.
        let ada = rig.sim.records(crm, &tenant, case.contacts)[0]["id"].as_str().unwrap().to_string();
        let company = case.add_company(&rig.sim, &tenant, "Customer Co");
        case.set_company(&rig.sim, &tenant, &ada, &company);
        let _sink = rig.sink();
        let _writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[&tenant], &[]);
        rig.broker.produce(&case.topic(), &[case.request_by(&tenant, "c1", 1, "agent-1", Some("rep@acme.example"))]);
        wait_for("the write stored", Duration::from_secs(60), || rig.stored_writes() == 1);
        let owner_now = || {
            let records = rig.sim.records(crm, &tenant, case.calls);
            case.owner_of(record_of(case, &records, "c1", &tenant).expect("c1 written"))
        };
        assert_eq!(owner_now(), Some(rep.clone()), "written under the agent's user");
        let records = rig.sim.records(crm, &tenant, case.calls);
        let id = record_of(case, &records, "c1", &tenant).unwrap()["id"].as_str().unwrap().to_string();
        rig.sim.admin(
            "PATCH",
            &format!("/accounts/{crm}/{tenant}/objects/{}/{id}", case.calls),
            Some(json!({ case.owner_field(): case.owner_value(&lead) })),
        );
        let r = rig.reconcile(crm);
        assert_eq!(r["checked"], 1, "{r}");
        if owned {
            assert_eq!((r["findings"]["field_changed"].as_i64(), r["repaired"].as_i64()), (Some(1), Some(1)), "{r}");
            assert_eq!(owner_now(), Some(rep.clone()), "the tenant owns the owner: put back");
        } else {
            assert_eq!(r["matching"], 1, "a person's reassignment is not drift under the shipped contract: {r}");
            assert_eq!(owner_now(), Some(lead.clone()), "their reassignment stands");
            // The weekly attribution check reports it, and a company a person took off the
            // record, and repairs neither.
            case.clear_context(&rig.sim, &tenant, case.calls, &id, &company);
            let (code, out) = rig.crm_sync(&["reconcile", "--tenant", &tenant, "--crm", crm, "--json", "--attribution"]);
            assert_eq!(code, 0);
            let a: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
            assert_eq!((a["findings"]["owner_changed"].as_i64(), a["findings"]["context_changed"].as_i64()), (Some(1), Some(1)), "{a}");
            assert_eq!(a["repaired"], 0, "{a}");
            assert_eq!(owner_now(), Some(lead.clone()), "reported, not repaired");
            wait_for("attribution findings stored", Duration::from_secs(20), || {
                rig.db.count("SELECT count(*) FROM audit WHERE stage = 'RECONCILER' AND operation = 'reconcile.attribution' AND outcome = 'DRIFT_FOUND'") == 2
            });
        }
        if owned {
            // After the repair, the attribution check finds the owner as written.
            let (code, out) = rig.crm_sync(&["reconcile", "--tenant", &tenant, "--crm", crm, "--json", "--attribution"]);
            assert_eq!(code, 0);
            let a: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
            assert!(a["findings"]["owner_changed"].is_null() && a["findings"]["context_changed"].is_null(), "{a}");
        }
    }
}

/// Late matches: a call to a number no contact had, and a meeting with an attendee no
/// contact had, are written without contacts; then a person creates those contacts. The next
/// pass searches again and associates both (`late_associated`, repaired; the call's number
/// is cached for the writer), while a meeting whose attendee still matches no one stays
/// `unassociated`. A second pass finds nothing new to do.
fn unassociated_activities_are_matched_again_by_the_next_pass(case: &Case) {
    let a = case.acts();
    let rig = activity_rig(case, "lm");
    let (tenant, crm) = (rig.tenant.as_str(), case.name());
    let _sink = rig.sink();
    let _writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[tenant], &[]);
    let later = "+14155550123";
    let start = live_ms() + 86_400_000;
    let (meeting, meeting_key) = case.meeting(tenant, "ev1", 1, MeetingStatus::Confirmed, start, &["late@customer.example"]);
    let (alone, alone_key) = case.meeting(tenant, "ev2", 1, MeetingStatus::Confirmed, start, &["never@elsewhere.example"]);
    rig.broker.produce(&case.topic(), &[case.request_to(tenant, "c1", 1, later), meeting, alone]);
    wait_for("three writes stored", Duration::from_secs(60), || rig.stored_writes() == 3);
    let call = || {
        let records = rig.sim.records(crm, tenant, case.calls);
        record_of(case, &records, "c1", tenant).expect("c1 written").clone()
    };
    assert!(call()["associations"].as_array().is_none_or(|x| x.is_empty()), "no contact yet: {}", call());

    // People add the contacts.
    let admin = |object: &str, body: Value| {
        rig.sim.admin("POST", &format!("/accounts/{crm}/{tenant}/objects/{object}"), Some(body))["id"].as_str().unwrap().to_string()
    };
    let by_phone = admin(case.contacts, case.contact_on("Late", "(415) 555-0123"));
    let by_email = admin(case.contacts, (a.contact_with_email)("Late", "late@customer.example"));

    let r = rig.reconcile(crm);
    assert_eq!(r["findings"]["late_associated"], 2, "{r}");
    assert_eq!(r["findings"]["unassociated"], 1, "the meeting no contact matches: {r}");
    assert!(r["repaired"].as_i64() >= Some(2), "{r}");
    assert!(associated(&call(), std::slice::from_ref(&by_phone)), "the call hangs under the new contact: {}", call());
    let m = case.record_keyed(&rig.sim, tenant, a.meetings.0, &meeting_key);
    assert!(associated(&m, std::slice::from_ref(&by_email)), "the meeting has its attendee's contact: {m}");
    let lonely = case.record_keyed(&rig.sim, tenant, a.meetings.0, &alone_key);
    assert!(lonely["associations"].as_array().is_none_or(|x| x.is_empty()), "{lonely}");
    // The writer's cache learnt the number.
    // Named by a keyed hash of the number (the deployment's CRM_SYNC_TOKEN_KEY, the tenant's salt).
    let name = crm_sync_tests::redis::cache_key_name(tenant, later);
    assert!(rig.prefix.keys().iter().any(|k| k.ends_with(&format!(":contact:{crm}:{name}"))), "{:?}", rig.prefix.keys());
    assert!(rig.prefix.keys().iter().all(|k| !k.contains(later)), "no number in a key name: {:?}", rig.prefix.keys());
    wait_for("late associations stored", Duration::from_secs(20), || {
        rig.db.count(
            "SELECT count(*) FROM audit WHERE stage = 'RECONCILER' AND operation = 'reconcile.late_associated' AND outcome = 'REPAIRED'",
        ) == 2
    });

    let again = rig.reconcile(crm);
    assert!(again["findings"]["late_associated"].is_null(), "already associated: {again}");
    assert_eq!(again["findings"]["unassociated"], 1, "{again}");
}

#[test]
fn hubspot_unassociated_activities_are_matched_again_by_the_next_pass() {
    unassociated_activities_are_matched_again_by_the_next_pass(&HUBSPOT)
}

#[test]
fn salesforce_unassociated_activities_are_matched_again_by_the_next_pass() {
    unassociated_activities_are_matched_again_by_the_next_pass(&SALESFORCE)
}

#[test]
fn zoho_unassociated_activities_are_matched_again_by_the_next_pass() {
    unassociated_activities_are_matched_again_by_the_next_pass(&ZOHO)
}

#[test]
fn pipedrive_unassociated_activities_are_matched_again_by_the_next_pass() {
    unassociated_activities_are_matched_again_by_the_next_pass(&PIPEDRIVE)
}

#[test]
fn hubspot_owner_reassignments_drift_only_where_the_tenant_owns_the_owner() {
    owner_reassignments_drift_only_where_the_tenant_owns_the_owner(&HUBSPOT)
}

#[test]
fn salesforce_owner_reassignments_drift_only_where_the_tenant_owns_the_owner() {
    owner_reassignments_drift_only_where_the_tenant_owns_the_owner(&SALESFORCE)
}

#[test]
fn zoho_owner_reassignments_drift_only_where_the_tenant_owns_the_owner() {
    owner_reassignments_drift_only_where_the_tenant_owns_the_owner(&ZOHO)
}

#[test]
fn pipedrive_owner_reassignments_drift_only_where_the_tenant_owns_the_owner() {
    owner_reassignments_drift_only_where_the_tenant_owns_the_owner(&PIPEDRIVE)
}

#[test]
fn hubspot_meetings_and_emails_drift_per_kind() {
    meetings_and_emails_drift_per_kind(&HUBSPOT)
}

#[test]
fn salesforce_meetings_and_emails_drift_per_kind() {
    meetings_and_emails_drift_per_kind(&SALESFORCE)
}

#[test]
fn zoho_meetings_and_emails_drift_per_kind() {
    meetings_and_emails_drift_per_kind(&ZOHO)
}

#[test]
fn pipedrive_meetings_and_emails_drift_per_kind() {
    meetings_and_emails_drift_per_kind(&PIPEDRIVE)
}

#[test]
fn hubspot_every_kind_of_drift() {
    every_kind_of_drift(&HUBSPOT)
}

#[test]
fn salesforce_every_kind_of_drift() {
    every_kind_of_drift(&SALESFORCE)
}

#[test]
fn zoho_every_kind_of_drift() {
    every_kind_of_drift(&ZOHO)
}

#[test]
fn pipedrive_every_kind_of_drift() {
    every_kind_of_drift(&PIPEDRIVE)
}

/// The people a tenant's leads were written as, changed by the CRM's users: one merged into
/// a duplicate someone typed in by hand, one deleted, one left alone (and at Salesforce one
/// lead converted to a contact). A pass follows the merged (and converted) person, so the
/// writer's person claim names the survivor and their next lead updates it; it dead-letters
/// the deleted person's lead once (CONTACT_DELETED) and re-creates nobody; a second pass
/// finds the followed people matching; replaying the dead letter writes the lead again, as
/// a new person.
fn people_merged_converted_or_deleted_in_the_crm(lc: &LeadCase) {
    let case = lc.case;
    let rig = lead_rig(lc, "rp");
    let (crm, t) = (case.name(), rig.tenant.as_str());
    let _sink = rig.sink();
    let _writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[t], &[]);
    let who: &[&str] = if case.crm == Crm::Salesforce {
        &["kept", "merged", "deleted", "twin", "converted"]
    } else {
        &["kept", "merged", "deleted", "twin"]
    };
    let phone = |w: &str| format!("+1415555030{}", who.iter().position(|x| *x == w).unwrap());
    let email = |w: &str| format!("{w}@prospect.example");
    let leads: Vec<_> = who
        .iter()
        .map(|w| {
            lc.lead(t, &format!("form-{w}"), |l| {
                l.email = Some(email(w));
                l.phone_e164 = Some(phone(w));
            })
        })
        .collect();
    rig.broker.produce(&case.topic(), &leads);
    let n = who.len() as i64;
    wait_for("the leads stored", Duration::from_secs(60), || rig.stored_writes() == n);
    let id_of = |w: &str| -> String {
        let found = lc.with_email(&rig.sim, t, &email(w));
        assert_eq!(found.len(), 1, "{found:?}");
        found[0]["id"].as_str().unwrap().to_string()
    };
    let (kept, merged, deleted) = (id_of("kept"), id_of("merged"), id_of("deleted"));
    let admin = |method: &str, path: String, body: Option<Value>| rig.sim.admin(method, &format!("/accounts/{crm}/{t}/{path}"), body);
    let table = lc.created_in;
    let survivor =
        admin("POST", format!("objects/{table}"), Some(lc.by_hand("Merged", &email("merged"))))["id"].as_str().unwrap().to_string();
    admin("POST", format!("objects/{table}/{merged}/merge"), Some(json!({ "into": survivor })));
    admin("DELETE", format!("objects/{table}/{deleted}"), None);
    // The twin's person deleted, and two contacts with their number (and no address) typed in.
    let twin = id_of("twin");
    admin("DELETE", format!("objects/{table}/{twin}"), None);
    for first in ["Twin", "Twain"] {
        let national = format!("(415) 555-{}", &phone("twin")[8..]);
        admin("POST", format!("objects/{}", case.contacts), Some(case.contact_on(first, &national)));
    }
    let mut moved = vec![(email("merged"), format!("{}:{survivor}", if table.starts_with("Lead") { "lead" } else { "contact" }))];
    if case.crm == Crm::Salesforce {
        let lead = id_of("converted");
        let contact = admin(
            "POST",
            "objects/Contact".into(),
            Some(json!({"FirstName": "Conv", "LastName": "Lovelace", "Email": email("converted")})),
        );
        let contact = contact["id"].as_str().unwrap().to_string();
        admin("PATCH", format!("objects/Lead/{lead}"), Some(json!({"IsConverted": true, "ConvertedContactId": contact})));
        moved.push((email("converted"), format!("contact:{contact}")));
    }

    let r = rig.reconcile(crm);
    let followed = moved.len() as i64;
    assert_eq!((r["checked"].as_i64(), r["matching"].as_i64(), r["drifted"].as_i64()), (Some(n), Some(1), Some(followed + 2)), "{r}");
    let found = |k: &str| r["findings"][k].as_i64();
    assert_eq!((found("person_merged"), found("person_deleted"), found("person_ambiguous")), (Some(followed), Some(1), Some(1)), "{r}");
    assert_eq!((r["repaired"].as_i64(), r["dead_lettered"].as_i64(), r["deferred"].as_i64()), (Some(followed), Some(1), Some(0)), "{r}");
    let dl = dead_letters(&rig.broker);
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(
        (dl[0].stage, dl[0].reason, dl[0].kind),
        (Stage::Reconciler, DlqReason::ContactDeleted, Some(ActivityKind::Lead)),
        "{:?}",
        dl[0]
    );
    assert_eq!(dl[0].call_id.as_deref(), Some("form-deleted"));
    assert!(dl[0].detail.contains(&deleted) && dl[0].detail.contains("stays deleted"), "{}", dl[0].detail);
    // The writer's person claims: the moved people's name the record they are now; the
    // deleted person's names nobody; the untouched one's is as written.
    let claim = |w: &str| {
        let key = crm_connectors::person_claims::person_key(t, crm, &email(w));
        rig.prefix.hget(&crm_common::redis_keys::claim(&rig.prefix.0, t, &key), "record")
    };
    for (address, now) in &moved {
        let w = address.split('@').next().unwrap();
        assert_eq!(claim(w).as_deref(), Some(now.as_str()), "{w}'s claim follows");
    }
    assert_eq!(claim("deleted"), None, "the deleted person is forgotten");
    assert_eq!(claim("twin"), None, "so is the one several people may be now");
    assert!(claim("kept").is_some_and(|k| k.ends_with(&format!(":{kept}"))), "{:?}", claim("kept"));
    assert!(lc.with_email(&rig.sim, t, &email("deleted")).is_empty(), "nobody re-created");

    // The merged person's next lead updates the survivor.
    rig.broker.produce(&case.topic(), &[lc.lead(t, "ads-merged", |l| l.email = Some(email("merged")))]);
    let (finals, _, _) = outcomes(&rig.broker, n as usize + 1, Duration::from_secs(60));
    let next = finals.iter().find(|a| a.call_id.as_deref() == Some("ads-merged")).expect("the next lead's outcome");
    assert_eq!((next.outcome, next.crm_record_id.as_deref()), (AuditOutcome::Succeeded, Some(survivor.as_str())), "{next:?}");
    assert_eq!(lc.with_email(&rig.sim, t, &email("merged")).len(), 1, "no one new");

    // A second pass: the followed people match; the deletion is counted, not sent again;
    // the twins are reported again (until someone merges them).
    wait_for("the next lead stored", Duration::from_secs(30), || rig.stored_writes() == n + 1);
    wait_for("the findings stored", Duration::from_secs(30), || {
        rig.db.count("SELECT count(*) FROM audit WHERE stage = 'RECONCILER' AND kind = 'lead' AND outcome IN ('REPAIRED', 'DEAD_LETTERED')")
            == followed + 1
    });
    let r = rig.reconcile(crm);
    assert_eq!((r["checked"].as_i64(), r["matching"].as_i64(), r["dead_lettered"].as_i64()), (Some(n + 1), Some(n - 1), Some(1)), "{r}");
    assert_eq!(r["findings"]["person_ambiguous"].as_i64(), Some(1), "{r}");
    assert_eq!(r["findings"]["person_merged"], Value::Null, "{r}");
    assert_eq!(dead_letters(&rig.broker).len(), 1, "dead-lettered once");

    // Support replays the entry: the lead is written again, as a new person.
    let dlq = rig.db.wait_count("SELECT count(*) FROM dlq WHERE call_id = 'form-deleted'", 1, Duration::from_secs(30));
    assert_eq!(dlq, 1);
    let id: String = rig.db.query("SELECT dlq_id FROM dlq WHERE call_id = 'form-deleted'")[0].get(0);
    let (code, out) = rig.crm_sync(&["dlq", "replay", &id]);
    assert_eq!(code, 0, "{out}");
    wait_for("the deleted person's lead written again", Duration::from_secs(60), || {
        lc.with_email(&rig.sim, t, &email("deleted")).len() == 1
    });
    assert_ne!(id_of("deleted"), deleted, "a new person");
}

#[test]
fn hubspot_people_merged_converted_or_deleted_in_the_crm() {
    people_merged_converted_or_deleted_in_the_crm(&HUBSPOT_LEADS);
}

#[test]
fn salesforce_people_merged_converted_or_deleted_in_the_crm() {
    people_merged_converted_or_deleted_in_the_crm(&SALESFORCE_LEADS);
}

#[test]
fn zoho_people_merged_converted_or_deleted_in_the_crm() {
    people_merged_converted_or_deleted_in_the_crm(&ZOHO_LEADS);
}

#[test]
fn pipedrive_people_merged_converted_or_deleted_in_the_crm() {
    people_merged_converted_or_deleted_in_the_crm(&PIPEDRIVE_LEADS);
}

/// A range of a raw topic that was partly written already: ten activities went through, ten
/// more arrived while the normaliser was down and were skipped. `crm-sync backfill` over the
/// whole range (a dry run first) re-sends all twenty; the ten written ones are duplicates at
/// the writer's claim and the other ten are written: twenty records, one per activity (for
/// leads: twenty people, one per address).
fn backfill_over_a_partly_written_range_writes_each_once(kind: ActivityKind) {
    let (case, lc) = (&HUBSPOT, &HUBSPOT_LEADS);
    let leads = kind == ActivityKind::Lead;
    let rig = if leads { lead_rig(lc, "bfl") } else { rig(case, "bf", "") };
    let (tenant, crm) = (rig.tenant.as_str(), case.name());
    let topic = crm_common::config::Topics::default().raw(kind).to_string();
    let env = [("TENANTS_CONFIG", rig.tenants.path()), ("REDIS_URL", MACHINE_REDIS), ("REDIS_KEY_PREFIX", rig.prefix.0.as_str())];
    let from = chrono_now_minus(Duration::from_secs(2));
    let normaliser = rig.broker.service("normaliser", &env);
    let _deduper = rig.broker.service("deduper", &env);
    let _writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[tenant], &[]);
    let address = |id: &str| format!("{id}@backfill.example");
    let raw = |id: String, minute: i64| -> crm_sync_tests::Msg {
        let payload = if leads {
            let mut l = crm_common::events::fixtures::raw_lead(tenant, &id, minute);
            // Its own address and no number: each lead a person of its own.
            (l.email, l.phone) = (Some(address(&id)), None);
            l.submitted_at = live_ms() + minute * 1000;
            codec::encode(&l).unwrap()
        } else {
            codec::encode(&crm_common::events::fixtures::raw_call(tenant, &id, minute)).unwrap()
        };
        (tenant.to_string(), payload, vec![])
    };
    let batch = |range: std::ops::Range<i64>| -> Vec<crm_sync_tests::Msg> { range.map(|i| raw(format!("b{i}"), i)).collect() };
    // Records written per source id (records keyed by it; people with its address).
    let written = || -> HashMap<String, (u64, u64)> {
        if leads {
            let mut by: HashMap<String, (u64, u64)> = HashMap::new();
            for p in lc.people(&rig.sim, tenant) {
                if let Some(id) = lc.text(&p, lc.email).and_then(|e| e.strip_suffix("@backfill.example").map(str::to_string)) {
                    let e = by.entry(id).or_default();
                    (e.0, e.1) = (e.0 + 1, e.1 + 1);
                }
            }
            by
        } else {
            case.keys(&rig.sim, tenant)
                .into_iter()
                .map(|(k, v)| {
                    (k.strip_prefix(&format!("{tenant}:")).and_then(|k| k.strip_suffix(&format!(":{crm}"))).unwrap_or(&k).to_string(), v)
                })
                .collect()
        }
    };
    let live = || written().values().filter(|(_, live)| *live > 0).count();
    rig.broker.produce(&topic, &batch(0..10));
    wait_for("the first ten written", Duration::from_secs(60), || live() == 10);

    // The outage: ten more arrive while the normaliser is down, and it comes back on a new
    // group that starts at the end (as after a lost offsets topic): they are never read.
    normaliser.terminate();
    rig.broker.produce(&topic, &batch(10..20));
    let mut late_env = env.to_vec();
    late_env.extend([
        ("CONSUMER_GROUP", "normaliser-after"),
        ("KAFKA_OPTIONS", "auto.offset.reset=latest,session.timeout.ms=6000,heartbeat.interval.ms=500"),
    ]);
    let _normaliser = rig.broker.service("normaliser", &late_env);
    // Sentinels until one is written: the new group is reading (some sentinels may be
    // skipped too; the backfill covers them as well).
    let mut sentinels = 0;
    wait_for("the restarted normaliser reading", Duration::from_secs(60), || {
        rig.broker.produce(&topic, &[raw(format!("s{sentinels}"), 100 + sentinels)]);
        sentinels += 1;
        std::thread::sleep(Duration::from_millis(1500));
        live() > 10
    });
    // Sentinels sent before the first one came out may still be on their way: wait until
    // nothing more is written, so what the dry run is compared with has settled.
    let mut written_before = live();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(250));
        let now = live();
        if now != written_before {
            written_before = now;
            quiet_since = std::time::Instant::now();
        }
    }
    let expected = 20 + sentinels as usize;
    let what = format!("{}s", kind.as_str());
    assert!(
        written_before <= 10 + sentinels as usize && (10..20).all(|i| !written().contains_key(&format!("b{i}"))),
        "the skipped {what} were not written"
    );

    let (code, out) = rig.crm_sync(&["backfill", "--tenant", tenant, "--kind", kind.as_str(), "--from", &from, "--dry-run", "--quiet"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{expected} {what}")), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(live(), written_before, "a dry run sends nothing");

    let (code, out) = rig.crm_sync(&["backfill", "--tenant", tenant, "--kind", kind.as_str(), "--from", &from, "--quiet"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("re-sent {expected} {what}")), "{out}");
    wait_for("every one written", Duration::from_secs(90), || live() == expected);
    std::thread::sleep(Duration::from_secs(2));
    let all = written();
    assert_eq!(all.len(), expected, "{all:?}");
    assert!(all.values().all(|&(total, live)| total == 1 && live == 1), "one record each, none twice: {all:?}");
    if leads {
        assert_eq!(lc.people(&rig.sim, tenant).len(), expected + 1, "the backfilled people and the account's Ada, no one else");
    } else {
        assert_eq!(rig.sim.records(crm, tenant, case.calls).len(), expected);
    }
}

#[test]
fn backfill_over_a_partly_written_range_writes_each_call_once() {
    backfill_over_a_partly_written_range_writes_each_once(ActivityKind::Call);
}

#[test]
fn backfill_over_a_partly_written_range_of_leads_makes_each_person_once() {
    backfill_over_a_partly_written_range_writes_each_once(ActivityKind::Lead);
}

fn chrono_now_minus(d: Duration) -> String {
    let ms = crm_common::clock::now_ms() - d.as_millis() as i64;
    crm_common::audit_store::ts(ms).to_rfc3339()
}

/// The reconciler's budget: a pass restoring forty records runs while forty live calls are
/// being written, at a Pipedrive company whose burst allowance (8 requests per 2 s) is the
/// bottleneck for both. The pass draws from the writers' buckets and leaves half of each
/// limit to them, so crm-sim answers no 429 at all; the live writes and the repairs all land.
#[test]
fn a_pass_alongside_live_writes_never_pushes_them_into_429s() {
    const N: usize = 40;
    let case = &PIPEDRIVE;
    let rig = rig(case, "budget", "limits = { burst_per_2s = 8, search_per_2s = 3, seats = 10 }");
    let (tenant, crm) = (rig.tenant.as_str(), case.name());
    rig.sim.admin("PATCH", &format!("/accounts/{crm}/{tenant}/limits"), Some(json!({"burst_api_token": 8, "search_burst": 3})));
    let _sink = rig.sink();
    let _writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[tenant], &[]);
    let batch = |from: usize| -> Vec<crm_sync_tests::Msg> {
        (from..from + N).map(|i| case.request_to(tenant, &format!("c{i}"), 2, CUSTOMER)).collect()
    };
    rig.broker.produce(&case.topic(), &batch(0));
    wait_for("the first forty stored", Duration::from_secs(90), || rig.stored_writes() == N as i64);

    // A person re-opens every one of them (an admin edit: it spends none of the allowance).
    let (field, open, ended) = case.progress_field;
    let written = rig.sim.records(crm, tenant, case.calls);
    assert_eq!(written.len(), N);
    for r in &written {
        rig.sim.admin(
            "PATCH",
            &format!("/accounts/{crm}/{tenant}/objects/{}/{}", case.calls, r["id"].as_str().unwrap()),
            Some(json!({ field: open() })),
        );
    }

    // Forty more calls, and a pass once the writer is busy with them.
    let live = || case.keys(&rig.sim, tenant).len();
    rig.broker.produce(&case.topic(), &batch(N));
    wait_for("live writes under way", Duration::from_secs(30), || live() > N);
    let pending_at_start = 2 * N - live();
    let started = std::time::Instant::now();
    let (report, live_done_after) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            wait_for("the live writes", Duration::from_secs(120), || live() == 2 * N);
            started.elapsed()
        });
        let report = rig.reconcile(crm);
        (report, watch.join().unwrap())
    });
    let pass_took = started.elapsed();
    assert!(pending_at_start > 0, "the pass overlapped live writes");
    assert!(report["checked"].as_u64().is_some_and(|c| c >= N as u64), "the forty, and any live write already stored: {report}");
    assert_eq!(report["findings"]["field_changed"], N, "{report}");
    assert_eq!(report["repaired"], N, "{report}");

    let records = rig.sim.records(crm, tenant, case.calls);
    assert_eq!(records.len(), 2 * N);
    let reopened = records.iter().filter(|r| r["fields"][field] != ended()).count();
    assert_eq!(reopened, 0, "every re-opened record restored and every live one written as ended");
    let keys = case.keys(&rig.sim, tenant);
    assert!(keys.values().all(|&(total, live)| total == 1 && live == 1), "{keys:?}");
    let state = rig.sim.state(crm, tenant);
    assert_eq!(case.answers(&rig.sim, tenant, 429), 0, "no request was throttled: {}", state["counters"]);
    eprintln!(
        "budget: {pending_at_start} live writes pending when the pass began; they finished after {live_done_after:?}, the pass (40 restores) after {pass_took:?}; counters {}",
        state["counters"]
    );
}

/// The service: two `reconciler` replicas on a 3 s cadence share each (tenant, CRM)'s turn,
/// so passes are one per interval whichever replica runs them, and drift made by a person is
/// repaired without anyone running a command. The parity reports land in the audit store.
#[test]
fn replicas_on_a_cadence_take_turns_and_repair_on_their_own() {
    let case = &HUBSPOT;
    let rig = rig(case, "svc", "");
    let (tenant, crm) = (rig.tenant.as_str(), case.name());
    let _sink = rig.sink();
    let writer = case.writer(&rig.broker, &rig.tenants, &rig.prefix, &[tenant], &[]);
    let msgs: Vec<_> = ["c1", "c2", "c3"].iter().map(|c| case.request_to(tenant, c, 2, CUSTOMER)).collect();
    rig.broker.produce(&case.topic(), &msgs);
    wait_for("three writes stored", Duration::from_secs(60), || rig.stored_writes() == 3);
    drop(writer);

    let records = rig.sim.records(crm, tenant, case.calls);
    let c1 = record_of(case, &records, "c1", tenant).expect("c1")["id"].as_str().unwrap().to_string();
    let (field, open, ended) = case.progress_field;
    rig.sim.admin("PATCH", &format!("/accounts/{crm}/{tenant}/objects/{}/{c1}", case.calls), Some(json!({ field: open() })));

    let env: Vec<(String, String)> = rig.env().into_iter().chain([("RECONCILE_EVERY".to_string(), "3s".to_string())]).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let replicas: Vec<Proc> = (0..2).map(|_| rig.broker.service("reconciler", &[&env[..], &[("RECONCILE_CRMS", crm)]].concat())).collect();
    let restored =
        || record_of(case, &rig.sim.records(crm, tenant, case.calls), "c1", tenant).is_some_and(|r| r["fields"][field] == ended());
    wait_for("c1 restored by the service", Duration::from_secs(60), restored);
    wait_for("four passes", Duration::from_secs(60), || {
        rig.db.count(&format!("SELECT count(*) FROM reconcile_runs WHERE tenant_id = '{tenant}'")) >= 4
    });
    for r in replicas {
        assert!(r.terminate().success(), "a replica stops cleanly on SIGTERM");
    }

    let starts: Vec<i64> = rig
        .db
        .query(&format!("SELECT (extract(epoch FROM started_at) * 1000)::bigint FROM reconcile_runs WHERE tenant_id = '{tenant}' AND crm = '{crm}' ORDER BY started_at"))
        .iter()
        .map(|row| row.get(0))
        .collect();
    let gaps: Vec<i64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|&g| g >= 2_900), "one pass per 3 s interval across both replicas: gaps {gaps:?} ms");
    let repaired = rig.db.count(&format!("SELECT coalesce(sum(repaired), 0) FROM reconcile_runs WHERE tenant_id = '{tenant}'"));
    assert_eq!(repaired, 1, "the drift was repaired once; later passes found parity");
    let latest = rig
        .db
        .count(&format!("SELECT matching::bigint FROM reconcile_runs WHERE tenant_id = '{tenant}' ORDER BY finished_at DESC LIMIT 1"));
    assert_eq!(latest, 3);
}
