//! The Zoho CRM writer as a separate process against the dev broker, the machine's Redis and
//! crm-sim: the writer suite (tests/harness/writer_suite.rs) for Zoho CRM.

crm_sync_tests::writer_suite!(crm_sync_tests::writer_suite::ZOHO);
crm_sync_tests::activity_suite!(crm_sync_tests::writer_suite::ZOHO);
crm_sync_tests::timeline_suite!(crm_sync_tests::writer_suite::ZOHO);

#[test]
fn unreadable_users_leave_actors_unmapped_not_writes_failed() {
    crm_sync_tests::timeline_suite::unreadable_users_leave_actors_unmapped_not_writes_failed(
        &crm_sync_tests::writer_suite::ZOHO,
        "users.READ",
    )
}
crm_sync_tests::lead_suite!(crm_sync_tests::lead_suite::ZOHO_LEADS);

/// Zoho's lead assignment rule (`lar_id`): with owners left to the CRM, the rule the tenant
/// names gives a new lead its owner, and an update names none (a person's reassignment
/// stands). An org that holds Email unique refuses a second lead with DUPLICATE_DATA naming
/// the record: a lead another integration inserted a moment ago, not yet in search, is that
/// person and is updated, not duplicated.
#[test]
fn new_leads_take_the_named_assignment_rule_and_a_refused_duplicate_is_the_person() {
    use crm_common::events::AuditOutcome;
    use crm_sync_tests::crm_sim::Auth;
    use crm_sync_tests::lead_suite::{ZOHO_LEADS as LC, ZOHO_RULE};
    use crm_sync_tests::writer_suite::{outcomes, ZOHO};
    use crm_sync_tests::{Broker, RedisPrefix};
    use serde_json::json;
    use std::time::Duration;
    let broker = Broker::start(1);
    let sim = crm_sync_tests::crm_sim::CrmSim::start();
    let mut fields = (LC.fields)();
    fields["Leads"]["Email"] = json!({"type": "text", "unique": true});
    LC.account(
        &sim,
        "acme",
        json!({
            "fields": fields,
            "search_lag_ms": 60_000,
            "zoho_lead_rules": {ZOHO_RULE: "queue@org.example"},
            "objects": {
                "users": [(LC.user)("queue@org.example"), (LC.user)("rep@org.example")],
                "Contacts": [ZOHO.contact_on("Ada", "(415) 555-2671")]
            }
        }),
    );
    let [queue, rep] =
        [LC.user_ids(&sim, "acme", &["queue@org.example"]), LC.user_ids(&sim, "acme", &["rep@org.example"])].map(|v| v[0].clone());
    let tenants = LC.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("leads-zoho-rule");
    let w = ZOHO.writer(&broker, &tenants, &prefix, &["acme"], &[("ZOHO_SEARCH_LAG", "60s")]);
    let lead = |id: &str, email: &str, campaign: &str| {
        LC.lead("acme", id, |l| {
            l.email = Some(email.into());
            l.phone_e164 = None;
            l.attribution.utm_campaign = Some(campaign.into());
        })
    };
    broker.produce(&ZOHO.topic(), &[lead("a1", "assigned@prospect.example", "one")]);
    let (finals, dlq, _) = outcomes(&broker, 1, Duration::from_secs(60));
    assert!(dlq.is_empty() && finals.iter().all(|f| f.outcome == AuditOutcome::Succeeded), "{finals:?} {dlq:?}");
    let person = |email: &str| {
        let p = LC.with_email(&sim, "acme", email);
        assert_eq!(p.len(), 1, "{email}: {p:?}");
        p.into_iter().next().unwrap()
    };
    assert_eq!(person("assigned@prospect.example")["fields"]["Owner"]["id"], json!(queue), "the named rule assigned the new lead");

    // Another integration inserts a lead for dup@, spelt with capitals (search will not show
    // it for a minute; the unique Email refuses the address in any case).
    let token = ZOHO.token("acme");
    let theirs = sim.call(
        "POST",
        "/zoho/crm/v7/Leads",
        Auth::Zoho(&token),
        Some(&json!({"data": [{"Last_Name": "Hopper", "Company": "Navy", "Email": "Dup@Prospect.example"}]})),
    );
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    let theirs = theirs.body["data"][0]["details"]["id"].as_str().unwrap().to_string();
    // Someone reassigns a1's lead to the rep.
    let a1 = person("assigned@prospect.example")["id"].as_str().unwrap().to_string();
    sim.admin("PATCH", &format!("/accounts/zoho/acme/objects/Leads/{a1}"), Some(json!({"Owner": {"id": rep, "name": "Rep"}})));
    broker.produce(&ZOHO.topic(), &[lead("d1", "dup@prospect.example", "dup"), lead("a2", "assigned@prospect.example", "two")]);
    let (finals, dlq, _) = outcomes(&broker, 3, Duration::from_secs(60));
    assert!(dlq.is_empty(), "{dlq:?}");
    let of = |id: &str| finals.iter().find(|f| f.call_id.as_deref() == Some(id)).unwrap_or_else(|| panic!("no final for {id}: {finals:?}"));
    let d1 = of("d1");
    assert_eq!(d1.outcome, AuditOutcome::Succeeded, "{d1:?}");
    assert!(d1.detail.contains("answer to a create") && d1.detail.contains("updated"), "{}", d1.detail);
    assert_eq!(d1.crm_record_id.as_deref(), Some(theirs.as_str()), "their lead is the person");
    let dup = person("dup@prospect.example");
    assert_eq!((dup["fields"]["Last_Name"].as_str(), dup["fields"]["Crm_Sync_Latest_Campaign"].as_str()), (Some("Hopper"), Some("dup")));
    let a2 = of("a2");
    assert_eq!(a2.outcome, AuditOutcome::Succeeded, "{a2:?}");
    let now = person("assigned@prospect.example");
    assert_eq!(now["fields"]["Crm_Sync_Latest_Campaign"], "two", "updated: {now}");
    assert_eq!(now["fields"]["Owner"]["id"], json!(rep), "the person's reassignment stands");
    assert!(w.terminate().success());
}
