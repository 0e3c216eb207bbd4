//! crm-sim's Salesforce against CRM-APIS §2, over HTTP: sObject and collection shapes, external
//! ID upsert, SOQL and SOSL, the rolling 24-hour allocation and long-running concurrency (403
//! REQUEST_LIMIT_EXCEEDED, Sforce-Limit-Info), auth, errors and faults.

use crm_sync_tests::crm_sim::{Auth, CrmSim};
use serde_json::{json, Value};

const TOKEN: &str = "00D!sf-token";
const V: &str = "/salesforce/services/data/v66.0";

fn org(sim: &CrmSim, extra: Value) -> Value {
    let mut spec = json!({
        "crm": "salesforce", "account": "org-1", "plan": "enterprise", "seats": 5, "search_lag_ms": 0,
        "tokens": [{"token": TOKEN, "kind": "oauth", "refresh_token": "sf-rt", "client_id": "cid", "client_secret": "cs", "expires_in_s": 7200}],
        "fields": {"Task": {"CallExtId__c": {"external_id": true, "unique": true}}},
        "key_field": {"object": "Task", "field": "CallExtId__c"},
        "objects": {"Contact": [{"FirstName": "Jane", "LastName": "Doe", "Phone": "(415) 555-1212"}, {"LastName": "Local", "Phone": "555-1212"}]}
    });
    if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
        s.extend(e);
    }
    sim.account(spec)
}

fn jane(sim: &CrmSim) -> String {
    sim.records("salesforce", "org-1", "Contact").iter().find(|r| r["fields"]["LastName"] == "Doe").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn task(who: Option<&str>) -> Value {
    let mut t = json!({"Subject": "Call", "TaskSubtype": "Call", "Status": "Completed", "CallType": "Outbound", "CallDurationInSeconds": 125, "ActivityDate": "2025-01-15", "CallObject": "c-1"});
    if let Some(w) = who {
        t["WhoId"] = json!(w);
    }
    t
}

#[test]
fn sobject_crud_and_external_id_upsert() {
    let sim = CrmSim::start();
    org(&sim, json!({}));
    let who = jane(&sim);
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(TOKEN), Some(&task(Some(&who))));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["success"], true);
    assert_eq!(r.body["errors"], json!([]));
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("00T"));
    assert!(r.header("sforce-limit-info").unwrap().starts_with("api-usage=1/"), "{:?}", r.header("sforce-limit-info"));

    let read = sim.call("GET", &format!("{V}/sobjects/Task/{id}"), Auth::Bearer(TOKEN), None);
    assert_eq!(read.status, 200);
    assert_eq!(read.body["attributes"]["type"], "Task");
    assert_eq!(read.body["attributes"]["url"], format!("/services/data/v66.0/sobjects/Task/{id}"));
    assert_eq!(read.body["WhoId"], who.as_str());
    assert_eq!(read.body["CallDurationInSeconds"], 125);
    assert_eq!(read.body["Priority"], "Normal", "defaults apply");
    let fifteen = &id[..15];
    assert_eq!(
        sim.call("GET", &format!("{V}/sobjects/Task/{fifteen}?fields=Subject"), Auth::Bearer(TOKEN), None).body["Subject"],
        "Call",
        "15-character ids work"
    );

    assert_eq!(
        sim.call("PATCH", &format!("{V}/sobjects/Task/{id}"), Auth::Bearer(TOKEN), Some(&json!({"Description": "notes"}))).status,
        204
    );
    let r = sim.call("PATCH", &format!("{V}/sobjects/Task/{id}"), Auth::Bearer(TOKEN), Some(&json!({"TaskSubtype": "Call"})));
    assert_eq!(r.status, 400);
    assert_eq!(r.body[0]["errorCode"], "INVALID_FIELD_FOR_INSERT_UPDATE", "TaskSubtype is create-only");

    // Upsert by external id: created, then updated; v45 answers 204 on update.
    let up = |v: &str, body: Value| {
        sim.call("PATCH", &format!("/salesforce/services/data/{v}/sobjects/Task/CallExtId__c/key-1"), Auth::Bearer(TOKEN), Some(&body))
    };
    let first = up("v66.0", task(None));
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["created"], true);
    let second = up("v66.0", json!({"Subject": "Call again"}));
    assert_eq!(second.status, 200);
    assert_eq!(second.body["created"], false);
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(up("v45.0", json!({"Subject": "old api"})).status, 204);
    let withsub = up("v66.0", json!({"Subject": "x", "TaskSubtype": "Call"}));
    assert_eq!(withsub.body[0]["errorCode"], "INVALID_FIELD_FOR_INSERT_UPDATE", "TaskSubtype on the update path is refused");
    let by_ext = sim.call("GET", &format!("{V}/sobjects/Task/CallExtId__c/key-1"), Auth::Bearer(TOKEN), None);
    assert_eq!(by_ext.body["Subject"], "old api");
    let r = sim.call("PATCH", &format!("{V}/sobjects/Task/Subject/x"), Auth::Bearer(TOKEN), Some(&json!({})));
    assert_eq!(r.status, 404, "Subject is not an external id");

    let mut dup = task(None);
    dup["CallExtId__c"] = json!("key-1");
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(TOKEN), Some(&dup));
    assert_eq!(r.status, 400);
    assert_eq!(r.body[0]["errorCode"], "DUPLICATE_VALUE");
    assert!(r.body[0]["message"].as_str().unwrap().contains(first.body["id"].as_str().unwrap()));

    // Deletion: 204, then PATCH says ENTITY_IS_DELETED, GET NOT_FOUND; upsert no longer matches it.
    let ext_id = first.body["id"].as_str().unwrap().to_string();
    assert_eq!(sim.call("DELETE", &format!("{V}/sobjects/Task/{ext_id}"), Auth::Bearer(TOKEN), None).status, 204);
    let r = sim.call("PATCH", &format!("{V}/sobjects/Task/{ext_id}"), Auth::Bearer(TOKEN), Some(&json!({"Subject": "x"})));
    assert_eq!(r.status, 404);
    assert_eq!(r.body[0]["errorCode"], "ENTITY_IS_DELETED");
    assert_eq!(sim.call("GET", &format!("{V}/sobjects/Task/{ext_id}"), Auth::Bearer(TOKEN), None).body[0]["errorCode"], "NOT_FOUND");
    assert_eq!(up("v66.0", task(None)).body["created"], true, "a recycled record is not an upsert match");
    let state = sim.state("salesforce", "org-1");
    assert_eq!(state["keys"]["key-1"], json!({"total": 2, "live": 1}));

    let deleted = sim.call(
        "GET",
        &format!("{V}/sobjects/Task/deleted/?start=2020-01-01T00:00:00%2B00:00&end=2100-01-01T00:00:00%2B00:00"),
        Auth::Bearer(TOKEN),
        None,
    );
    assert_eq!(deleted.body["deletedRecords"][0]["id"], ext_id.as_str());
    let describe = sim.call("GET", &format!("{V}/sobjects/Task/describe"), Auth::Bearer(TOKEN), None);
    let ext = describe.body["fields"].as_array().unwrap().iter().find(|f| f["name"] == "CallExtId__c").unwrap().clone();
    assert_eq!(ext["externalId"], true);
    let subtype = describe.body["fields"].as_array().unwrap().iter().find(|f| f["name"] == "TaskSubtype").unwrap().clone();
    assert_eq!(subtype["updateable"], false);
}

#[test]
fn collections_cap_at_200_report_in_order_and_roll_back_all_or_none() {
    let sim = CrmSim::start();
    org(&sim, json!({}));
    let rec = |k: &str| {
        let mut t = task(None);
        t["attributes"] = json!({"type": "Task"});
        t["CallExtId__c"] = json!(k);
        t
    };
    let many: Vec<Value> = (0..201).map(|i| rec(&format!("c{i}"))).collect();
    let r = sim.call("POST", &format!("{V}/composite/sobjects"), Auth::Bearer(TOKEN), Some(&json!({"allOrNone": false, "records": many})));
    assert_eq!(r.status, 400);
    assert_eq!(r.body[0]["errorCode"], "EXCEEDED_ID_LIMIT");

    let mut bad = rec("c1");
    bad["NoSuchField__c"] = json!("x");
    let r = sim.call(
        "POST",
        &format!("{V}/composite/sobjects"),
        Auth::Bearer(TOKEN),
        Some(&json!({"allOrNone": false, "records": [rec("c0"), bad.clone(), rec("c2")]})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["success"], true);
    assert_eq!(r.body[1]["success"], false);
    assert_eq!(r.body[1]["errors"][0]["statusCode"], "INVALID_FIELD", "save results use statusCode");
    assert_eq!(r.body[2]["success"], true);
    assert_eq!(sim.records("salesforce", "org-1", "Task").len(), 2);

    let r = sim.call(
        "POST",
        &format!("{V}/composite/sobjects"),
        Auth::Bearer(TOKEN),
        Some(&json!({"allOrNone": true, "records": [rec("c3"), bad]})),
    );
    assert_eq!(r.body[0]["errors"][0]["statusCode"], "ALL_OR_NONE_OPERATION_ROLLED_BACK");
    assert_eq!(sim.records("salesforce", "org-1", "Task").len(), 2, "nothing kept");

    let full: Vec<Value> = (100..300).map(|i| rec(&format!("c{i}"))).collect();
    let r = sim.call(
        "PATCH",
        &format!("{V}/composite/sobjects/Task/CallExtId__c"),
        Auth::Bearer(TOKEN),
        Some(&json!({"allOrNone": false, "records": full})),
    );
    assert_eq!(r.status, 200);
    assert!(r.body.as_array().unwrap().iter().all(|x| x["created"] == true));
    let again: Vec<Value> =
        (100..102).map(|i| json!({"attributes": {"type": "Task"}, "CallExtId__c": format!("c{i}"), "Subject": "updated"})).collect();
    let r = sim.call("PATCH", &format!("{V}/composite/sobjects/Task/CallExtId__c"), Auth::Bearer(TOKEN), Some(&json!({"records": again})));
    assert_eq!(r.body[0]["created"], false);
    assert_eq!(sim.records("salesforce", "org-1", "Task").len(), 202);

    let ids = format!("{},{}", r.body[0]["id"].as_str().unwrap(), "00TDn0000000zzzAAA");
    let read = sim.call("GET", &format!("{V}/composite/sobjects/Task?ids={ids}&fields=Subject"), Auth::Bearer(TOKEN), None);
    assert_eq!(read.body[0]["Subject"], "updated");
    assert_eq!(read.body[1], Value::Null);
}

#[test]
fn soql_and_sosl() {
    let sim = CrmSim::start();
    org(&sim, json!({"search_lag_ms": 1000}));
    sim.freeze();
    let q = |path: &str, soql: &str| sim.call("GET", &format!("{V}/{path}/?q={}", urlencode(soql)), Auth::Bearer(TOKEN), None);
    let mut t = task(None);
    t["CallExtId__c"] = json!("q-1");
    let id = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(TOKEN), Some(&t)).body["id"].as_str().unwrap().to_string();

    let r = q("query", "SELECT Id, Subject FROM Task WHERE CallExtId__c = 'Q-1' AND IsDeleted = false LIMIT 5");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["totalSize"], 1, "SOQL = on text ignores case");
    assert_eq!(r.body["done"], true);
    assert_eq!(r.body["records"][0]["Id"], id.as_str());
    sim.call("DELETE", &format!("{V}/sobjects/Task/{id}"), Auth::Bearer(TOKEN), None);
    assert_eq!(q("query", "SELECT Id FROM Task WHERE CallExtId__c = 'q-1'").body["totalSize"], 0);
    let all = q("queryAll", "SELECT Id, IsDeleted FROM Task WHERE CallExtId__c = 'q-1'");
    assert_eq!(all.body["records"][0]["IsDeleted"], true);
    assert_eq!(q("query", "SELECT Id FROM Task WHERE").body[0]["errorCode"], "MALFORMED_QUERY");
    assert_eq!(q("query", "SELECT Nope__c FROM Task").body[0]["errorCode"], "INVALID_FIELD");

    // SOSL phone search ignores punctuation; a bare local number is another number.
    let s = |term: &str| {
        let r = sim.call(
            "GET",
            &format!("{V}/search/?q={}", urlencode(&format!("FIND {{{term}}} IN PHONE FIELDS RETURNING Contact(Id, Phone), Lead(Id)"))),
            Auth::Bearer(TOKEN),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["searchRecords"].as_array().unwrap().iter().map(|x| x["Phone"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(s("4155551212"), vec!["(415) 555-1212"]);
    assert_eq!(s("\\+1 415 555 1212"), vec!["(415) 555-1212"]);
    assert!(s("4155551213").is_empty());
    let created = sim.call(
        "POST",
        &format!("{V}/sobjects/Contact/"),
        Auth::Bearer(TOKEN),
        Some(&json!({"LastName": "New", "MobilePhone": "+1 212 555 0100"})),
    );
    assert_eq!(created.status, 201);
    assert!(s("2125550100").is_empty(), "the index lags behind the write");
    sim.advance(1000);
    assert_eq!(s("2125550100").len(), 1);
    let r = sim.call("GET", &format!("{V}/search/?q={}", urlencode("FIND {a:b} IN PHONE FIELDS")), Auth::Bearer(TOKEN), None);
    assert_eq!(r.status, 400, "reserved characters must be escaped");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[test]
fn rolling_24h_allocation_reports_usage_and_answers_403() {
    let sim = CrmSim::start();
    org(&sim, json!({"limits": {"daily_requests": 5}, "tokens": [{"token": TOKEN, "kind": "oauth", "expires_in_s": 200000}]}));
    let t0 = sim.freeze();
    let get = || sim.call("GET", &format!("{V}/limits"), Auth::Bearer(TOKEN), None);
    let first = get();
    assert_eq!(first.header("sforce-limit-info").unwrap(), "api-usage=1/5");
    assert_eq!(first.body["DailyApiRequests"], json!({"Max": 5, "Remaining": 4}));
    sim.advance(1_000);
    for n in 2..=5 {
        assert_eq!(get().header("sforce-limit-info").unwrap(), format!("api-usage={n}/5"));
    }
    let over = get();
    assert_eq!(over.status, 403, "Salesforce throttles with 403, not 429");
    assert_eq!(over.body, json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED", "fields": []}]));
    assert!(over.header("retry-after").is_none());
    let now = sim.admin("GET", "/clock", None)["now_ms"].as_i64().unwrap();
    sim.advance(t0 + 86_400_000 - 1 - now);
    assert_eq!(get().status, 403, "1 ms before the first request is 24 h old");
    sim.advance(1);
    let freed = get();
    assert_eq!(freed.status, 200, "the first request's unit is freed exactly 24 h later");
    assert_eq!(freed.header("sforce-limit-info").unwrap(), "api-usage=5/5");
}

#[test]
fn long_running_requests_hit_the_concurrency_cap() {
    let sim = CrmSim::start();
    org(&sim, json!({"limits": {"long_running_concurrency": 1}}));
    sim.freeze();
    sim.fault("salesforce", "org-1", json!({"kind": "latency", "latency_ms": 3000, "count": 1}));
    std::thread::scope(|s| {
        let slow = s.spawn(|| sim.call("GET", &format!("{V}/sobjects/Task/describe"), Auth::Bearer(TOKEN), None).status);
        sim.wait_in_flight("salesforce", "org-1", 1);
        sim.advance(20_000); // the slow request has now run for 20 s of simulated time
        let r = sim.call("GET", &format!("{V}/limits"), Auth::Bearer(TOKEN), None);
        assert_eq!(r.status, 403);
        assert_eq!(r.body[0]["message"], "ConcurrentPerOrgLongTxn Limit exceeded.");
        assert_eq!(r.body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
        assert_eq!(slow.join().unwrap(), 200);
    });
    assert_eq!(sim.call("GET", &format!("{V}/limits"), Auth::Bearer(TOKEN), None).status, 200);
}

#[test]
fn auth_errors_and_faults() {
    let sim = CrmSim::start();
    org(&sim, json!({}));
    sim.freeze();
    sim.advance(7_200_000);
    let r = sim.call("GET", &format!("{V}/limits"), Auth::Bearer(TOKEN), None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body, json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}]));
    let fresh = sim.form(
        "/salesforce/services/oauth2/token",
        &[("grant_type", "refresh_token"), ("refresh_token", "sf-rt"), ("client_id", "cid"), ("client_secret", "cs")],
        None,
    );
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert!(fresh.body.get("expires_in").is_none(), "Salesforce does not say when the session ends");
    assert_eq!(fresh.body["instance_url"], format!("{}/salesforce", sim.url));
    assert_eq!(fresh.body["token_type"], "Bearer");
    let token = fresh.body["access_token"].as_str().unwrap().to_string();
    let bad = sim.form("/salesforce/services/oauth2/token", &[("grant_type", "refresh_token"), ("refresh_token", "nope")], None);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"], "invalid_grant");

    let who = jane(&sim);
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(&token), Some(&json!({"Subject": "x", "Bogus__c": 1})));
    assert_eq!(r.body[0]["errorCode"], "INVALID_FIELD");
    assert_eq!(r.body[0]["message"], "No such column 'Bogus__c' on sobject of type Task");
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(&token), Some(&json!({"CallType": "Sideways"})));
    assert_eq!(r.body[0]["errorCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert_eq!(
        sim.call("POST", &format!("{V}/sobjects/Contact/"), Auth::Bearer(&token), Some(&json!({"FirstName": "x"}))).body[0]["errorCode"],
        "REQUIRED_FIELD_MISSING"
    );
    sim.admin("DELETE", &format!("/accounts/salesforce/org-1/objects/Contact/{who}"), None);
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(&token), Some(&task(Some(&who))));
    assert_eq!(r.body[0]["errorCode"], "ENTITY_IS_DELETED");
    assert_eq!(r.body[0]["fields"][0], "WhoId");
    sim.admin("DELETE", "/accounts/salesforce/org-1/fields/Task/CallExtId__c", None);
    let r = sim.call("PATCH", &format!("{V}/sobjects/Task/CallExtId__c/k"), Auth::Bearer(&token), Some(&task(None)));
    assert_eq!(r.status, 404, "a removed external-id field");

    sim.admin("POST", "/accounts/salesforce/org-1/permissions/Task.create/revoke", None);
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(&token), Some(&task(None)));
    assert_eq!(r.status, 403);
    assert_eq!(r.body[0]["errorCode"], "INSUFFICIENT_ACCESS_OR_READONLY");
    sim.admin("POST", "/accounts/salesforce/org-1/permissions/Task.create/grant", None);

    sim.fault("salesforce", "org-1", json!({"kind": "throttle", "count": 1}));
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(&token), Some(&task(None)));
    assert_eq!(r.status, 403);
    assert_eq!(r.body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
    sim.fault("salesforce", "org-1", json!({"kind": "503", "count": 1}));
    assert_eq!(sim.call("GET", &format!("{V}/limits"), Auth::Bearer(&token), None).body[0]["errorCode"], "SERVER_UNAVAILABLE");
    sim.fault("salesforce", "org-1", json!({"kind": "500", "count": 1}));
    assert_eq!(sim.call("GET", &format!("{V}/limits"), Auth::Bearer(&token), None).body[0]["errorCode"], "UNKNOWN_EXCEPTION");
    sim.fault("salesforce", "org-1", json!({"kind": "502", "count": 1, "after_write": true}));
    assert_eq!(sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(&token), Some(&task(None))).status, 502);
    assert_eq!(sim.records("salesforce", "org-1", "Task").len(), 1, "written before the 502");
}

/// Meetings as Events (CRM-APIS-ACTIVITIES §2.2): a start and an end or a duration unless
/// all-day, the end not before the start; EventWhoIds relates every matched contact (up to
/// 50) or one lead alone; a reschedule updates the times and keeps them consistent.
#[test]
fn events_relate_every_contact_and_check_their_times() {
    let sim = CrmSim::start();
    org(
        &sim,
        json!({"fields": {"Task": {"CallExtId__c": {"external_id": true, "unique": true}}, "Event": {"CrmSyncKey__c": {"external_id": true, "unique": true}}},
               "objects": {"Contact": [{"FirstName": "Jane", "LastName": "Doe", "Email": "jane@customer.example"}, {"LastName": "Max", "Email": "max@customer.example"}],
                           "Lead": [{"LastName": "Lee", "Company": "Leads Inc"}]}}),
    );
    let contacts: Vec<String> =
        sim.records("salesforce", "org-1", "Contact").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let lead = sim.records("salesforce", "org-1", "Lead")[0]["id"].as_str().unwrap().to_string();
    let event = |extra: Value| {
        let mut e = json!({"Subject": "Quarterly review", "StartDateTime": "2026-01-05T15:00:00.000+0000", "EndDateTime": "2026-01-05T15:30:00.000+0000",
            "Location": "Room 4", "ShowAs": "Busy", "CrmSyncKey__c": "acme:meeting:e1@google.com:salesforce"});
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        e
    };
    let r = sim.call("POST", &format!("{V}/sobjects/Event/"), Auth::Bearer(TOKEN), Some(&event(json!({"EventWhoIds": contacts}))));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("00U"), "{id}");
    let read = sim.call("GET", &format!("{V}/sobjects/Event/{id}"), Auth::Bearer(TOKEN), None);
    assert_eq!(read.body["DurationInMinutes"], 30, "{}", read.text);
    assert_eq!(read.body["EventWhoIds"].as_array().map(Vec::len), Some(2), "every contact related: {}", read.text);
    assert!(contacts.contains(&read.body["WhoId"].as_str().unwrap().to_string()));

    // Rescheduled: the new times, the duration kept consistent.
    let moved = json!({"StartDateTime": "2026-01-06T09:00:00.000+0000", "EndDateTime": "2026-01-06T10:00:00.000+0000"});
    assert_eq!(sim.call("PATCH", &format!("{V}/sobjects/Event/{id}"), Auth::Bearer(TOKEN), Some(&moved)).status, 204);
    let read = sim.call("GET", &format!("{V}/sobjects/Event/{id}"), Auth::Bearer(TOKEN), None);
    assert_eq!(read.body["DurationInMinutes"], 60, "{}", read.text);
    let backwards = json!({"EndDateTime": "2026-01-06T08:00:00.000+0000"});
    let r = sim.call("PATCH", &format!("{V}/sobjects/Event/{id}"), Auth::Bearer(TOKEN), Some(&backwards));
    assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("FIELD_INTEGRITY_EXCEPTION")), "{}", r.text);

    // What Salesforce refuses.
    let mut no_end = event(json!({}));
    no_end.as_object_mut().unwrap().remove("EndDateTime");
    no_end["CrmSyncKey__c"] = json!("k2");
    let r = sim.call("POST", &format!("{V}/sobjects/Event/"), Auth::Bearer(TOKEN), Some(&no_end));
    assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("REQUIRED_FIELD_MISSING")), "{}", r.text);
    no_end["DurationInMinutes"] = json!(45);
    assert_eq!(sim.call("POST", &format!("{V}/sobjects/Event/"), Auth::Bearer(TOKEN), Some(&no_end)).status, 201, "a duration is enough");
    let mixed = event(json!({"EventWhoIds": [contacts[0], lead], "CrmSyncKey__c": "k3"}));
    let r = sim.call("POST", &format!("{V}/sobjects/Event/"), Auth::Bearer(TOKEN), Some(&mixed));
    assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("FIELD_INTEGRITY_EXCEPTION")), "a lead stands alone: {}", r.text);
    let all_day = json!({"Subject": "Offsite", "IsAllDayEvent": true, "ActivityDate": "2026-01-07", "EventWhoIds": [lead]});
    assert_eq!(sim.call("POST", &format!("{V}/sobjects/Event/"), Auth::Bearer(TOKEN), Some(&all_day)).status, 201);
    let gone = json!({"EventWhoIds": ["003Dn0000000zzzAAA"], "CrmSyncKey__c": "k4"});
    let r = sim.call("POST", &format!("{V}/sobjects/Event/"), Auth::Bearer(TOKEN), Some(&event(gone)));
    assert_eq!(r.status, 400, "{}", r.text);
}

/// Email Tasks relate every contact through `TaskWhoIds` as Events do through
/// `EventWhoIds` (shared activities): up to 50 contacts or one lead alone; setting the list
/// on an update replaces it; the WhoId stays the primary while it is still related.
#[test]
fn tasks_relate_every_contact_through_task_who_ids() {
    let sim = CrmSim::start();
    org(
        &sim,
        json!({"fields": {"Task": {"CallExtId__c": {"external_id": true, "unique": true}}},
               "objects": {"Contact": [{"FirstName": "Jane", "LastName": "Doe", "Email": "jane@customer.example"}, {"LastName": "Max", "Email": "max@customer.example"}],
                           "Lead": [{"LastName": "Lee", "Company": "Leads Inc"}]}}),
    );
    let contacts: Vec<String> =
        sim.records("salesforce", "org-1", "Contact").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let lead = sim.records("salesforce", "org-1", "Lead")[0]["id"].as_str().unwrap().to_string();
    let task = |extra: Value| {
        let mut t = json!({"Subject": "Email: Renewal", "TaskSubtype": "Email", "Status": "Completed", "ActivityDate": "2026-01-05"});
        t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        t
    };
    let r = sim.call(
        "POST",
        &format!("{V}/sobjects/Task/"),
        Auth::Bearer(TOKEN),
        Some(&task(json!({"WhoId": contacts[1], "TaskWhoIds": contacts}))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let read = sim.call("GET", &format!("{V}/sobjects/Task/{id}"), Auth::Bearer(TOKEN), None);
    assert_eq!(read.body["TaskWhoIds"].as_array().map(Vec::len), Some(2), "every contact related: {}", read.text);
    assert_eq!(read.body["WhoId"], json!(contacts[1]), "the primary person stays: {}", read.text);
    // Setting the list replaces it.
    let r = sim.call("PATCH", &format!("{V}/sobjects/Task/{id}"), Auth::Bearer(TOKEN), Some(&json!({"TaskWhoIds": [contacts[0]]})));
    assert_eq!(r.status, 204, "{}", r.text);
    let read = sim.call("GET", &format!("{V}/sobjects/Task/{id}"), Auth::Bearer(TOKEN), None);
    assert_eq!(read.body["TaskWhoIds"], json!([contacts[0]]), "{}", read.text);
    // A lead is related alone; an unknown id is refused.
    let mixed = task(json!({"TaskWhoIds": [contacts[0], lead]}));
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(TOKEN), Some(&mixed));
    assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("FIELD_INTEGRITY_EXCEPTION")), "{}", r.text);
    let unknown = task(json!({"TaskWhoIds": ["003000000000999AAA"]}));
    let r = sim.call("POST", &format!("{V}/sobjects/Task/"), Auth::Bearer(TOKEN), Some(&unknown));
    assert_eq!(r.status, 400, "{}", r.text);
}

/// CRM-APIS-ACTIVITIES §6.2: a field made through the Tooling API is on Task and Event, and
/// nobody has field-level access to it: not in describe, a write naming it fails, until a
/// permission set assigned to the API user grants it. Each grant once.
#[test]
fn a_tooling_field_is_invisible_until_a_permission_set_grants_it() {
    let sim = CrmSim::start();
    org(&sim, json!({}));
    let post = |path: &str, body: Value| sim.call("POST", &format!("{V}{path}"), Auth::Bearer(TOKEN), Some(&body));
    let described = |object: &str| -> Vec<String> {
        let d = sim.call("GET", &format!("{V}/sobjects/{object}/describe/"), Auth::Bearer(TOKEN), None);
        d.body["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect()
    };
    let field = json!({"FullName": "Activity.Ext__c", "Metadata": {"label": "Ext", "type": "Text", "length": 255, "externalId": true, "unique": true}});
    // On Task or Event directly: refused, they are made on Activity.
    let r = post("/tooling/sobjects/CustomField", json!({"FullName": "Task.Ext__c", "Metadata": field["Metadata"]}));
    assert_eq!(r.status, 400, "{}", r.text);
    let r = post("/tooling/sobjects/CustomField", field.clone());
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.body["id"].as_str().unwrap().starts_with("00N"));
    let again = post("/tooling/sobjects/CustomField", field.clone());
    assert_eq!((again.status, again.body[0]["errorCode"].as_str()), (400, Some("DUPLICATE_DEVELOPER_NAME")), "{}", again.text);
    assert!(!described("Task").contains(&"Ext__c".to_string()) && !described("Event").contains(&"Ext__c".to_string()));
    let mut t = task(None);
    t["Ext__c"] = json!("k-1");
    let w = post("/sobjects/Task/", t.clone());
    assert_eq!(w.status, 400, "a field without access cannot be written: {}", w.text);

    let me = sim.call("GET", "/salesforce/services/oauth2/userinfo", Auth::Bearer(TOKEN), None);
    assert_eq!(me.status, 200, "{}", me.text);
    let user = me.body["user_id"].as_str().unwrap().to_string();
    let set = post("/sobjects/PermissionSet", json!({"Name": "ext_access", "Label": "Ext access"}));
    assert_eq!(set.status, 201, "{}", set.text);
    let set = set.body["id"].as_str().unwrap().to_string();
    let q =
        sim.call("GET", &format!("{V}/query/?q=SELECT+Id+FROM+PermissionSet+WHERE+Name+%3D+%27ext_access%27"), Auth::Bearer(TOKEN), None);
    assert_eq!(q.body["records"][0]["Id"], set.as_str(), "{}", q.text);
    let grant = json!({"ParentId": set, "SobjectType": "Task", "Field": "Task.Ext__c", "PermissionsRead": true, "PermissionsEdit": true});
    assert_eq!(post("/sobjects/FieldPermissions", grant.clone()).status, 201);
    assert!(!described("Task").contains(&"Ext__c".to_string()), "granted in a set nobody has yet");
    let assign = json!({"AssigneeId": user, "PermissionSetId": set});
    assert_eq!(post("/sobjects/PermissionSetAssignment", assign.clone()).status, 201);
    assert!(described("Task").contains(&"Ext__c".to_string()), "granted and assigned: visible");
    assert!(!described("Event").contains(&"Ext__c".to_string()), "granted on Task only");
    assert_eq!(post("/sobjects/Task/", t).status, 201);
    for (path, body) in [("/sobjects/FieldPermissions", grant), ("/sobjects/PermissionSetAssignment", assign)] {
        let r = post(path, body);
        assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("DUPLICATE_VALUE")), "{path}: {}", r.text);
    }
}

/// Leads as Salesforce treats them (CRM-APIS-ACTIVITIES §5.2): the org's assignment rule
/// gives a lead its owner unless `Sforce-Auto-Assign: FALSE`; its duplicate rule refuses a
/// lead or contact whose email a live contact or unconverted lead has (`DUPLICATES_DETECTED`,
/// `duplicateResut` in a single answer, `duplicateResult` in a collection's), an alert rule
/// only until `allowSave=true`, a block rule always; a converted lead is read-only; an org
/// without rules takes duplicates.
#[test]
fn leads_meet_the_orgs_assignment_and_duplicate_rules() {
    let sim = CrmSim::start();
    let rules = |duplicates: &str| {
        json!({"sf_lead_rules": {"assign_to": "queue@org.example", "duplicates": duplicates},
        "objects": {
            "User": [{"Email": "queue@org.example", "Name": "Lead Queue"}, {"Email": "rep@org.example", "Name": "Rep"}],
            "Contact": [{"LastName": "Known", "Email": "Known@Customer.example"}],
            "Lead": [{"LastName": "Old", "Company": "Co", "Email": "old@customer.example", "IsConverted": true}]
        }})
    };
    org(&sim, rules("alert"));
    let users = sim.records("salesforce", "org-1", "User");
    let user = |email: &str| users.iter().find(|u| u["fields"]["Email"] == email).unwrap()["id"].as_str().unwrap().to_string();
    let (queue, rep) = (user("queue@org.example"), user("rep@org.example"));
    let post = |body: Value, headers: &[(&str, &str)]| {
        sim.call_with("POST", &format!("{V}/sobjects/Lead/"), Auth::Bearer(TOKEN), Some(&body), headers, None)
    };
    let owner = |id: &str| sim.call("GET", &format!("{V}/sobjects/Lead/{id}"), Auth::Bearer(TOKEN), None).body["OwnerId"].clone();

    // Without the header the rule runs and overrides the owner asked for; FALSE keeps it.
    let a = post(json!({"LastName": "Able", "Company": "A", "Email": "able@prospect.example", "OwnerId": rep}), &[]);
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(owner(a.body["id"].as_str().unwrap()), json!(queue), "the assignment rule reassigned it");
    let read = sim.call("GET", &format!("{V}/sobjects/Lead/{}", a.body["id"].as_str().unwrap()), Auth::Bearer(TOKEN), None);
    assert_eq!(
        (read.body["Status"].as_str(), read.body["IsConverted"].as_bool()),
        (Some("Open - Not Contacted"), Some(false)),
        "{}",
        read.text
    );
    let b = post(
        json!({"LastName": "Baker", "Company": "B", "Email": "baker@prospect.example", "OwnerId": rep}),
        &[("Sforce-Auto-Assign", "FALSE")],
    );
    assert_eq!(owner(b.body["id"].as_str().unwrap()), json!(rep));
    // A rule named by id: an AssignmentRule's (01Q…, 15 or 18 characters) runs; anything
    // else is refused MALFORMED_ID, nothing created.
    let named = post(
        json!({"LastName": "Named", "Company": "N", "Email": "named@prospect.example"}),
        &[("Sforce-Auto-Assign", "01Q5g000000AbCdEAF")],
    );
    assert_eq!(named.status, 201, "{}", named.text);
    assert_eq!(owner(named.body["id"].as_str().unwrap()), json!(queue));
    for bad in ["5725767000000700001", "01Qshort", "00Q5g000000AbCdEAF"] {
        let r = post(json!({"LastName": "Bad", "Company": "B", "Email": "bad@prospect.example"}), &[("Sforce-Auto-Assign", bad)]);
        assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("MALFORMED_ID")), "{bad}: {}", r.text);
    }
    assert!(sim.records("salesforce", "org-1", "Lead").iter().all(|l| l["fields"]["LastName"] != "Bad"), "nothing created");
    let patched = sim.call(
        "PATCH",
        &format!("{V}/sobjects/Lead/{}", b.body["id"].as_str().unwrap()),
        Auth::Bearer(TOKEN),
        Some(&json!({"FirstName": "Bo", "Title": "VP Sales", "Country": "DE"})),
    );
    assert_eq!(patched.status, 204, "{}", patched.text);
    assert_eq!(owner(b.body["id"].as_str().unwrap()), json!(queue), "an update without the header runs the rule again (the harsher case)");

    // A duplicate of a contact's address (any case): refused, with the match; allowSave passes an alert rule.
    let dup = json!({"LastName": "Known", "Company": "K", "Email": "known@customer.EXAMPLE"});
    let r = post(dup.clone(), &[]);
    assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("DUPLICATES_DETECTED")), "{}", r.text);
    let result = &r.body[0]["duplicateResut"];
    assert_eq!(result["duplicateRule"], "Standard_Lead_Duplicate_Rule");
    assert_eq!(result["matchResults"][0]["entityType"], "Contact");
    assert!(result["matchResults"][0]["matchRecords"][0]["record"]["Id"].as_str().unwrap().starts_with("003"), "{result}");
    assert!(r.body[0].get("duplicateResult").is_none(), "the single-record answer misspells it");
    let saved = post(dup.clone(), &[("Sforce-Duplicate-Rule-Header", "allowSave=true; includeRecordDetails=false")]);
    assert_eq!(saved.status, 201, "{}", saved.text);
    // In a collection, the correct spelling.
    let coll = sim.call(
        "POST",
        &format!("{V}/composite/sobjects"),
        Auth::Bearer(TOKEN),
        Some(&json!({"allOrNone": false, "records": [{"attributes": {"type": "Contact"}, "LastName": "Again", "Email": "able@prospect.example"}]})),
    );
    assert_eq!(coll.body[0]["errors"][0]["statusCode"], "DUPLICATES_DETECTED", "{}", coll.text);
    assert_eq!(coll.body[0]["errors"][0]["duplicateResult"]["matchResults"][0]["entityType"], "Lead");
    // A converted lead's address is free, and the converted lead cannot be changed.
    assert_eq!(post(json!({"LastName": "New", "Company": "N", "Email": "old@customer.example"}), &[]).status, 201);
    let old = sim.records("salesforce", "org-1", "Lead").iter().find(|l| l["fields"]["LastName"] == "Old").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = sim.call("PATCH", &format!("{V}/sobjects/Lead/{old}"), Auth::Bearer(TOKEN), Some(&json!({"FirstName": "Olga"})));
    assert_eq!((r.status, r.body[0]["errorCode"].as_str()), (400, Some("CANNOT_UPDATE_CONVERTED_LEAD")), "{}", r.text);

    // A block rule refuses even with allowSave; an org without rules takes the duplicate.
    let post_to = |sim: &CrmSim, headers: &[(&str, &str)]| {
        sim.call_with("POST", &format!("{V}/sobjects/Lead/"), Auth::Bearer(TOKEN), Some(&dup), headers, None)
    };
    let blocking = CrmSim::start();
    org(&blocking, rules("block"));
    let r = post_to(&blocking, &[("Sforce-Duplicate-Rule-Header", "allowSave=true")]);
    assert_eq!(r.body[0]["errorCode"], "DUPLICATES_DETECTED", "{}", r.text);
    assert_eq!(r.body[0]["duplicateResut"]["allowSave"], false);
    let lenient = CrmSim::start();
    org(&lenient, json!({"objects": {"Contact": [{"LastName": "Known", "Email": "known@customer.example"}]}}));
    assert_eq!(post_to(&lenient, &[]).status, 201, "no rule, no refusal");
}
