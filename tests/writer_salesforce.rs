//! The Salesforce writer as a separate process against the dev broker, the machine's Redis and
//! crm-sim: the writer suite (tests/harness/writer_suite.rs) for Salesforce, and the activity suite for
//! its meetings (Events).

crm_sync_tests::writer_suite!(crm_sync_tests::writer_suite::SALESFORCE);
crm_sync_tests::activity_suite!(crm_sync_tests::writer_suite::SALESFORCE);
crm_sync_tests::timeline_suite!(crm_sync_tests::writer_suite::SALESFORCE);
crm_sync_tests::lead_suite!(crm_sync_tests::lead_suite::SALESFORCE_LEADS);

/// Salesforce's lead assignment rule (`Sforce-Auto-Assign`): with the owner left to the CRM
/// (`leads.owner = "crm"`, the default) the org's active rule gives a new Lead its owner;
/// an update never runs it, so a person's reassignment stands; a tenant's fixed owner is
/// kept on create (the rule is told not to run).
#[test]
fn new_leads_take_the_orgs_assignment_rule_and_updates_never_run_it() {
    use crm_common::events::AuditOutcome;
    use crm_sync_tests::lead_suite::SALESFORCE_LEADS as LC;
    use crm_sync_tests::writer_suite::{outcomes, SALESFORCE};
    use crm_sync_tests::{Broker, RedisPrefix, TempFile};
    use serde_json::json;
    use std::time::Duration;
    let broker = Broker::start(1);
    let sim = crm_sync_tests::crm_sim::CrmSim::start();
    let org = json!({
        "sf_lead_rules": {"assign_to": "queue@org.example"},
        "objects": {
            "User": [{"Email": "queue@org.example", "Name": "Lead Queue"}, {"Email": "rep@org.example", "Name": "Rep"}],
            "Contact": [SALESFORCE.contact_on("Ada", "(415) 555-2671")]
        }
    });
    LC.account(&sim, "acme", org.clone());
    LC.account(&sim, "globex", org);
    let [queue, rep] =
        [LC.user_ids(&sim, "acme", &["queue@org.example"]), LC.user_ids(&sim, "acme", &["rep@org.example"])].map(|v| v[0].clone());
    let globex_rep = LC.user_ids(&sim, "globex", &["rep@org.example"])[0].clone();
    let acme = LC.tenants(&sim, &["acme"], "");
    let globex = LC.tenants(&sim, &["globex"], &format!("owner = {{ fixed = \"{globex_rep}\" }}"));
    let both = TempFile::new(
        "tenants.toml",
        &format!("{}\n{}", std::fs::read_to_string(acme.path()).unwrap(), std::fs::read_to_string(globex.path()).unwrap()),
    );
    let prefix = RedisPrefix::new("leads-assign");
    let w = SALESFORCE.writer(&broker, &both, &prefix, &["acme", "globex"], &[]);
    let lead = |t: &str, id: &str, campaign: &str| {
        LC.lead(t, id, |l| {
            l.email = Some("assigned@prospect.example".into());
            l.phone_e164 = None;
            l.attribution.utm_campaign = Some(campaign.into());
        })
    };
    broker.produce(&SALESFORCE.topic(), &[lead("acme", "a1", "one"), lead("globex", "g1", "one")]);
    let (finals, dlq, _) = outcomes(&broker, 2, Duration::from_secs(60));
    assert!(dlq.is_empty() && finals.iter().all(|f| f.outcome == AuditOutcome::Succeeded), "{finals:?} {dlq:?}");
    let person = |account: &str| LC.with_email(&sim, account, "assigned@prospect.example").remove(0);
    assert_eq!(person("acme")["fields"]["OwnerId"], json!(queue), "the org's rule assigned the new Lead");
    assert_eq!(person("globex")["fields"]["OwnerId"], json!(globex_rep), "the tenant's fixed owner, kept from the rule");

    // Someone reassigns acme's Lead to the rep; the next lead of theirs updates it, and the
    // rule does not run again.
    let id = person("acme")["id"].as_str().unwrap().to_string();
    sim.admin("PATCH", &format!("/accounts/salesforce/acme/objects/Lead/{id}"), Some(json!({"OwnerId": rep})));
    broker.produce(&SALESFORCE.topic(), &[lead("acme", "a2", "two")]);
    let (finals, dlq, _) = outcomes(&broker, 3, Duration::from_secs(60));
    assert!(dlq.is_empty(), "{dlq:?}");
    let a2 = finals.iter().find(|f| f.call_id.as_deref() == Some("a2")).expect("a2's final");
    assert_eq!(a2.outcome, AuditOutcome::Succeeded, "{a2:?}");
    let now = person("acme");
    assert_eq!(now["fields"]["CrmSyncLatestCampaign__c"], "two", "updated: {now}");
    assert_eq!(now["fields"]["OwnerId"], json!(rep), "the person's reassignment stands");
    assert!(w.terminate().success());
}
