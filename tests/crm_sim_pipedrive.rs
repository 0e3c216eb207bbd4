//! crm-sim's Pipedrive against CRM-APIS §4, over HTTP: v2 activities and persons, person search
//! by phone, the two-second burst and the daily token budget at their boundaries, auth (API
//! token, query token, OAuth), errors and faults.

use crm_sync_tests::crm_sim::{Auth, CrmSim};
use serde_json::{json, Value};

const TOKEN: &str = "pd-api-token";
const A: &str = "/pipedrive/api/v2/activities";

fn company(sim: &CrmSim, extra: Value) -> Value {
    let mut spec = json!({
        "crm": "pipedrive", "account": "acme", "plan": "lite", "seats": 1,
        "tokens": [{"token": TOKEN, "kind": "static"}, {"token": "pd-oauth", "kind": "oauth", "expires_in_s": 200000, "refresh_token": "pd-rt", "client_id": "cid", "client_secret": "cs"}],
        "key_field": {"object": "activities", "field": "note", "marker": "crm-sync-key:"},
        "objects": {"persons": [{"name": "Jane Doe", "phones": [{"value": "+1 (415) 555-1212", "label": "work", "primary": true}]}]}
    });
    if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
        s.extend(e);
    }
    sim.account(spec)
}

fn jane(sim: &CrmSim) -> u64 {
    sim.records("pipedrive", "acme", "persons")[0]["id"].as_str().unwrap().parse().unwrap()
}

fn activity(key: &str, person: Option<u64>) -> Value {
    let mut a = json!({"subject": "Call with Jane", "type": "call", "due_date": "2025-01-15", "due_time": "10:30", "duration": "00:02", "done": true,
                       "note": format!("<p>notes</p><p>crm-sync-key:{key}</p>")});
    if let Some(p) = person {
        a["participants"] = json!([{"person_id": p, "primary": true}]);
    }
    a
}

#[test]
fn activities_lifecycle_and_no_uniqueness() {
    let sim = CrmSim::start();
    company(&sim, json!({"plan": "ultimate"}));
    let p = jane(&sim);
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("k1", Some(p))));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["success"], true);
    let d = &r.body["data"];
    let id = d["id"].as_u64().expect("ids are integers");
    assert_eq!(d["person_id"], p, "the primary participant is the activity's person");
    assert_eq!(d["is_deleted"], false);
    assert!(d["marked_as_done_time"].is_string());
    assert!(d["add_time"].as_str().unwrap().ends_with('Z'));

    // No unique fields: the same call twice makes two activities.
    assert_eq!(sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("k1", Some(p)))).status, 200);
    assert_eq!(sim.state("pipedrive", "acme")["keys"]["k1"]["live"], 2);

    let patched = sim.call("PATCH", &format!("{A}/{id}"), Auth::PipedriveToken(TOKEN), Some(&json!({"subject": "Edited"})));
    assert_eq!(patched.body["data"]["subject"], "Edited");
    let listed =
        sim.call("GET", &format!("{A}?person_id={p}&updated_since=2020-01-01T00:00:00Z&limit=1"), Auth::PipedriveToken(TOKEN), None);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["additional_data"]["next_cursor"], "1");
    let page2 = sim.call("GET", &format!("{A}?person_id={p}&limit=1&cursor=1"), Auth::PipedriveToken(TOKEN), None);
    assert_eq!(page2.body["additional_data"]["next_cursor"], Value::Null);
    assert_eq!(
        sim.call("GET", &format!("{A}?updated_since=2020-01-01T00:00:00.5Z"), Auth::PipedriveToken(TOKEN), None).status,
        400,
        "no fractional seconds"
    );

    let del = sim.call("DELETE", &format!("{A}/{id}"), Auth::PipedriveToken(TOKEN), None);
    assert_eq!(del.body, json!({"success": true, "data": {"id": id}}));
    let gone = sim.call("GET", &format!("{A}/{id}"), Auth::PipedriveToken(TOKEN), None);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body["success"], false);
    assert_eq!(sim.call("PATCH", &format!("{A}/{id}"), Auth::PipedriveToken(TOKEN), Some(&json!({"done": false}))).status, 404);

    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&json!({"subject": "x", "person_id": p})));
    assert_eq!(r.status, 400, "person_id is read-only in v2");
    assert_eq!(r.body["code"], "ERR_SCHEMA_VALIDATION_FAILED");
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&json!({"subject": "x", "custom_fields": {}})));
    assert_eq!(r.status, 400, "v2 activities have no custom fields");
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&json!({"subject": "x", "due_time": "10:30:00"})));
    assert_eq!(r.status, 400);
    sim.admin("DELETE", &format!("/accounts/pipedrive/acme/objects/persons/{p}"), None);
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("k2", Some(p))));
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("not found"));
    assert_eq!(
        sim.call("POST", "/pipedrive/api/v1/activities", Auth::PipedriveToken(TOKEN), Some(&json!({}))).status,
        410,
        "v1 activities are retired"
    );
}

#[test]
fn person_search_by_phone() {
    let sim = CrmSim::start();
    company(&sim, json!({"plan": "ultimate"}));
    sim.freeze();
    let search = |q: &str| {
        let r = sim.call("GET", &format!("/pipedrive/api/v2/persons/search?{q}"), Auth::PipedriveToken(TOKEN), None);
        (r.status, r.body["data"]["items"].as_array().cloned().unwrap_or_default())
    };
    let (s, items) = search("term=4155551212&fields=phone");
    assert_eq!(s, 200);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["item"]["phones"][0], "+1 (415) 555-1212");
    assert_eq!(items[0]["item"]["type"], "person");
    assert_eq!(search("term=5551212&fields=phone").1.len(), 1, "a partial number finds it: filter on the client");
    assert!(search("term=4155551212&fields=phone&exact_match=true").1.is_empty(), "exact_match compares the value as typed");
    assert_eq!(search("term=%2B1%20(415)%20555-1212&fields=phone&exact_match=true").1.len(), 1);
    assert!(search("term=4155551212&fields=name").1.is_empty());
    assert_eq!(search("term=4&fields=phone").0, 400, "at least two characters");
    assert_eq!(search("term=jane").1.len(), 1);
}

#[test]
fn two_second_burst_and_search_burst_at_their_boundaries() {
    let sim = CrmSim::start();
    company(&sim, json!({}));
    sim.freeze();
    let get = || sim.call("GET", &format!("{A}?limit=1"), Auth::PipedriveToken(TOKEN), None);
    let first = get();
    assert_eq!(first.header_u64("x-ratelimit-limit"), 20);
    assert_eq!(first.header_u64("x-ratelimit-remaining"), 19);
    assert_eq!(first.header_u64("x-ratelimit-reset"), 2);
    assert_eq!(first.header_u64("x-daily-requests-left"), 10_000);
    sim.advance(1000);
    for _ in 0..19 {
        assert_eq!(get().status, 200);
    }
    let over = get();
    assert_eq!(over.status, 429);
    assert_eq!(over.body["success"], false);
    assert_eq!(over.header_u64("retry-after"), 1);
    assert_eq!(over.header_u64("x-ratelimit-remaining"), 0);
    sim.advance(999);
    assert_eq!(get().status, 429, "1 ms before the first request leaves the 2 s window");
    sim.advance(1);
    assert_eq!(get().status, 200);
    assert_eq!(get().status, 429);

    // OAuth tokens have their own, larger window.
    let oauth = sim.call("GET", &format!("{A}?limit=1"), Auth::Bearer("pd-oauth"), None);
    assert_eq!(oauth.status, 200);
    assert_eq!(oauth.header_u64("x-ratelimit-limit"), 80);
    assert!(oauth.header("x-daily-requests-left").is_none(), "only for API-token requests");

    sim.advance(2000);
    let s = || sim.call("GET", "/pipedrive/api/v2/persons/search?term=jane", Auth::PipedriveToken(TOKEN), None);
    for _ in 0..10 {
        assert_eq!(s().status, 200);
    }
    assert_eq!(s().status, 429, "search: ten per two seconds");
    assert_eq!(get().status, 200, "other endpoints still have burst left");
}

#[test]
fn daily_token_budget_is_shared_and_resets_at_midnight() {
    let sim = CrmSim::start();
    company(&sim, json!({"limits": {"daily_tokens": 32}}));
    sim.freeze();
    let p = jane(&sim);
    // create 5 + create 5 + search 20 = 30 tokens; another create (5) would pass 32.
    let a = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("b1", Some(p))));
    assert_eq!(a.header_u64("x-daily-ratelimit-token-limit"), 32);
    assert_eq!(a.header_u64("x-daily-ratelimit-token-remaining"), 27);
    assert_eq!(a.header_u64("x-daily-requests-left"), 9_999, "one write today");
    sim.call("POST", A, Auth::Bearer("pd-oauth"), Some(&activity("b2", Some(p))));
    let s = sim.call("GET", "/pipedrive/api/v2/persons/search?term=jane", Auth::PipedriveToken(TOKEN), None);
    assert_eq!(s.header_u64("x-daily-ratelimit-token-remaining"), 2, "the OAuth app drew on the same budget");
    let over = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("b3", Some(p))));
    assert_eq!(over.status, 429);
    let wait = over.header_u64("retry-after");
    let now = sim.admin("GET", "/clock", None)["now_ms"].as_i64().unwrap();
    let to_midnight = 86_400_000 - now.rem_euclid(86_400_000);
    assert_eq!(wait as i64, (to_midnight + 999) / 1000, "blocked until the daily reset");
    let first = a.body["data"]["id"].as_u64().unwrap();
    assert_eq!(sim.call("GET", &format!("{A}/{first}"), Auth::PipedriveToken(TOKEN), None).status, 200, "a 1-token read still fits");
    sim.advance(to_midnight);
    assert_eq!(sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("b3", Some(p)))).status, 200);
}

#[test]
fn auth_and_faults() {
    let sim = CrmSim::start();
    company(&sim, json!({}));
    let r = sim.call("GET", &format!("{A}?limit=1"), Auth::PipedriveToken("wrong"), None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "unauthorized access");
    assert_eq!(r.body["errorCode"], 401);
    assert_eq!(
        sim.call("GET", &format!("{A}?limit=1&api_token={TOKEN}"), Auth::None, None).status,
        200,
        "the query-string token works too"
    );

    let basic = Some(("cid", "cs"));
    let ok = sim.form("/pipedrive/oauth/token", &[("grant_type", "refresh_token"), ("refresh_token", "pd-rt")], basic);
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["api_domain"], format!("{}/pipedrive", sim.url));
    assert_eq!(ok.body["token_type"], "Bearer");
    let t = ok.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(sim.call("GET", &format!("{A}?limit=1"), Auth::Bearer(&t), None).status, 200);
    let bad = sim.form("/pipedrive/oauth/token", &[("grant_type", "refresh_token"), ("refresh_token", "nope")], basic);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"], "invalid_grant");
    // Refresh tokens rotate (unverified for Pipedrive: crm-sim models the harsher case): the
    // answer carries a new one and the old one is dead.
    let rotated = ok.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rotated, "pd-rt");
    let old = sim.form("/pipedrive/oauth/token", &[("grant_type", "refresh_token"), ("refresh_token", "pd-rt")], basic);
    assert_eq!((old.status, old.body["error"].as_str()), (400, Some("invalid_grant")), "the rotated-out refresh token is refused");
    assert_eq!(
        sim.form("/pipedrive/oauth/token", &[("grant_type", "refresh_token"), ("refresh_token", &rotated)], Some(("cid", "wrong"))).status,
        401
    );

    sim.admin("POST", "/accounts/pipedrive/acme/permissions/activities:full/revoke", None);
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("x", None)));
    assert_eq!(r.status, 403);
    assert_eq!(r.body["success"], false);
    sim.admin("POST", "/accounts/pipedrive/acme/permissions/activities:full/grant", None);

    sim.fault("pipedrive", "acme", json!({"kind": "503", "count": 1}));
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("f1", None)));
    assert_eq!(r.status, 503);
    assert_eq!(r.body["success"], false);
    sim.fault("pipedrive", "acme", json!({"kind": "throttle", "count": 1}));
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("f1", None)));
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    sim.fault("pipedrive", "acme", json!({"kind": "500", "count": 1, "after_write": true}));
    assert_eq!(sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&activity("f2", None))).status, 500);
    let found = sim.call("GET", &format!("{A}?updated_since=2020-01-01T00:00:00Z"), Auth::PipedriveToken(TOKEN), None);
    assert!(
        found.body["data"].as_array().unwrap().iter().any(|a| a["note"].as_str().unwrap().contains("crm-sync-key:f2")),
        "the 500 came after the write; a filtered list finds it"
    );
}

/// Emails and meetings are activities of type `email` and `meeting` (CRM-APIS-ACTIVITIES
/// §1.4, §2.4): a meeting's persons are its participants (the first primary), its guests
/// `attendees` (external emails too) read back only with `include_fields=attendees`, its v2
/// `location` an object; the `person_id` filter finds the primary participant only.
#[test]
fn meetings_and_emails_are_typed_activities_with_participants_and_attendees() {
    let sim = CrmSim::start();
    company(
        &sim,
        json!({"plan": "ultimate", "objects": {"persons": [
            {"name": "Jane Doe", "emails": [{"value": "jane@customer.example", "primary": true}]},
            {"name": "Max Muster", "emails": [{"value": "max@customer.example", "primary": true}]}
        ]}}),
    );
    let persons = sim.records("pipedrive", "acme", "persons");
    let id = |i: usize| persons[i]["id"].as_str().unwrap().parse::<u64>().unwrap();
    let (jane, max) = (id(0), id(1));
    let meeting = json!({"subject": "Quarterly review", "type": "meeting", "due_date": "2026-01-05", "due_time": "15:00", "duration": "00:30",
        "busy": true, "location": {"value": "Room 4, 1 Main St"},
        "participants": [{"person_id": jane, "primary": true}, {"person_id": max, "primary": false}],
        "attendees": [{"email": "jane@customer.example", "name": "Jane Doe", "status": "accepted", "person_id": jane},
                      {"email": "guest@elsewhere.example", "status": "noreply"}],
        "note": "<p>crm-sync-key:acme:meeting:e1@google.com:pipedrive</p>"});
    let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&meeting));
    assert_eq!(r.status, 200, "{}", r.text);
    let mid = r.body["data"]["id"].as_u64().unwrap();
    assert!(r.body["data"].get("attendees").is_none(), "attendees only when asked for: {}", r.text);
    let read = sim.call("GET", &format!("{A}/{mid}?include_fields=attendees"), Auth::PipedriveToken(TOKEN), None);
    assert_eq!(read.body["data"]["attendees"].as_array().map(Vec::len), Some(2), "{}", read.text);
    assert_eq!(read.body["data"]["participants"].as_array().map(Vec::len), Some(2));
    let by =
        |p: u64| sim.call("GET", &format!("{A}?person_id={p}"), Auth::PipedriveToken(TOKEN), None).body["data"].as_array().unwrap().len();
    assert_eq!((by(jane), by(max)), (1, 0), "person_id is the primary participant only");

    let email = json!({"subject": "Renewal", "type": "email", "due_date": "2026-01-05", "due_time": "09:00", "done": true,
        "participants": [{"person_id": max, "primary": true}]});
    assert_eq!(sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&email)).status, 200);

    for (bad, why) in [
        (json!({"type": "webinar"}), "activity type"),
        (json!({"type": "meeting", "location": "Room 4"}), "location"),
        (json!({"type": "meeting", "attendees": [{"name": "No Email"}]}), "attendees"),
        (json!({"type": "meeting", "attendees": [{"email": "a@b.example", "status": "maybe"}]}), "status"),
    ] {
        let r = sim.call("POST", A, Auth::PipedriveToken(TOKEN), Some(&bad));
        assert_eq!(r.status, 400, "{why}: {}", r.text);
        assert_eq!(r.body["success"], false);
    }
    // Mailbox emails cannot be created through the API.
    assert!(sim.call("POST", "/pipedrive/api/v1/mailbox/mailThreads", Auth::PipedriveToken(TOKEN), Some(&json!({}))).status >= 400);
}

/// Persons for lead capture (CRM-APIS-ACTIVITIES §5.4): custom fields by their per-company
/// code (found by name in personFields; an unknown code refused), an update that replaces
/// emails and merges custom fields, a list by ids, no uniqueness, an owner who must be a user.
#[test]
fn persons_take_custom_fields_by_code_updates_and_no_uniqueness() {
    let sim = CrmSim::start();
    company(&sim, json!({"fields": {"persons": {"crm_sync_latest_campaign": {"type": "text"}}}}));
    let fields = sim.call("GET", "/pipedrive/api/v2/personFields", Auth::PipedriveToken(TOKEN), None);
    assert_eq!(fields.status, 200, "{}", fields.text);
    let code = fields.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field_name"] == "crm_sync_latest_campaign" && f["is_custom_field"] == true)
        .and_then(|f| f["field_code"].as_str())
        .expect("the custom field, by name")
        .to_string();
    assert_eq!(code.len(), 40, "{code}");
    let person = |email: &str, campaign: &str| json!({"name": "Ann Lee", "emails": [{"value": email, "primary": true, "label": "work"}], "custom_fields": {&code: campaign}});
    let a = sim.call("POST", "/pipedrive/api/v2/persons", Auth::PipedriveToken(TOKEN), Some(&person("ann@prospect.example", "spring")));
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.body["data"]["id"].as_u64().unwrap();
    assert_eq!(a.body["data"]["custom_fields"][&code], "spring");
    // No uniqueness: the same address again is a second person.
    let b = sim.call("POST", "/pipedrive/api/v2/persons", Auth::PipedriveToken(TOKEN), Some(&person("ann@prospect.example", "autumn")));
    assert_eq!(b.status, 200, "{}", b.text);
    assert_ne!(b.body["data"]["id"], a.body["data"]["id"]);
    // A custom field by name, not code: refused.
    let bad = sim.call(
        "POST",
        "/pipedrive/api/v2/persons",
        Auth::PipedriveToken(TOKEN),
        Some(&json!({"name": "X", "custom_fields": {"crm_sync_latest_campaign": "x"}})),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    // An update merges custom fields and replaces the emails it is given.
    let patch =
        json!({"emails": [{"value": "ann.lee@prospect.example", "primary": true, "label": "work"}], "custom_fields": {&code: "summer"}});
    let u = sim.call("PATCH", &format!("/pipedrive/api/v2/persons/{id}"), Auth::PipedriveToken(TOKEN), Some(&patch));
    assert_eq!(u.status, 200, "{}", u.text);
    let listed = sim.call("GET", &format!("/pipedrive/api/v2/persons?ids={id}"), Auth::PipedriveToken(TOKEN), None);
    assert_eq!(listed.status, 200, "{}", listed.text);
    let data = listed.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(data[0]["custom_fields"][&code], "summer");
    assert_eq!(data[0]["emails"].as_array().map(Vec::len), Some(1));
    assert_eq!(data[0]["emails"][0]["value"], "ann.lee@prospect.example");
    // An owner who is no user of the company: refused; a person that is not there: 404.
    let owner =
        sim.call("PATCH", &format!("/pipedrive/api/v2/persons/{id}"), Auth::PipedriveToken(TOKEN), Some(&json!({"owner_id": 424242})));
    assert_eq!(owner.status, 400, "{}", owner.text);
    assert_eq!(sim.call("PATCH", "/pipedrive/api/v2/persons/999999", Auth::PipedriveToken(TOKEN), Some(&json!({"name": "Y"}))).status, 404);
}
