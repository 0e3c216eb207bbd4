//! crm-sim's HubSpot against CRM-APIS §1, over HTTP: shapes, search semantics, the ten-second,
//! daily and search limits at their boundaries, auth, errors and every injectable fault.

use crm_sync_tests::crm_sim::{Auth, CrmSim};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "hs-private-token";

fn portal(sim: &CrmSim, extra: Value) -> Value {
    let mut spec = json!({
        "crm": "hubspot", "account": "portal-1", "plan": "starter", "search_lag_ms": 0,
        // These tests show unique properties on calls where HubSpot enforces them (off by
        // default: unverified; see the last test).
        "enforce_activity_unique": true,
        "tokens": [{"token": TOKEN, "kind": "static"}],
        "fields": {"calls": {"crm_sync_key": {"unique": true}}},
        "key_field": {"object": "calls", "field": "crm_sync_key"},
        "objects": {"contacts": [
            {"firstname": "Jane", "lastname": "Doe", "phone": "(415) 555-1212"},
            {"firstname": "Max", "lastname": "Muster", "mobilephone": "+49 30 1234567"}
        ]}
    });
    if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
        s.extend(e);
    }
    sim.account(spec)
}

fn contact_id(sim: &CrmSim, first: &str) -> String {
    sim.records("hubspot", "portal-1", "contacts").iter().find(|r| r["fields"]["firstname"] == first).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn call_input(key: &str, contact: Option<&str>) -> Value {
    let mut v = json!({"properties": {"hs_timestamp": "2025-01-15T10:30:00Z", "hs_call_title": "Outbound call", "hs_call_direction": "OUTBOUND",
        "hs_call_status": "COMPLETED", "hs_call_duration": "125000", "hs_call_to_number": "+14155551212", "crm_sync_key": key}, "associations": []});
    if let Some(c) = contact {
        v["associations"] = json!([{"to": {"id": c}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}]}]);
    }
    v
}

const CALLS: &str = "/hubspot/crm/v3/objects/calls";

#[test]
fn call_lifecycle_has_hubspots_shapes() {
    let sim = CrmSim::start();
    portal(&sim, json!({}));
    let jane = contact_id(&sim, "Jane");

    let created = sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input("k1", Some(&jane))));
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().expect("id is a string").to_string();
    assert_eq!(created.body["properties"]["hs_call_duration"], "125000", "values come back as strings");
    assert_eq!(created.body["properties"]["hs_timestamp"], "2025-01-15T10:30:00.000Z");
    assert_eq!(created.body["archived"], false);
    assert!(created.body["createdAt"].as_str().unwrap().ends_with('Z'));

    let read =
        sim.call("GET", &format!("{CALLS}/{id}?properties=hs_call_title,crm_sync_key&associations=contacts"), Auth::Bearer(TOKEN), None);
    assert_eq!(read.status, 200);
    assert_eq!(read.body["properties"]["hs_call_title"], "Outbound call");
    assert_eq!(read.body["associations"]["contacts"]["results"][0]["id"], jane.as_str());
    let default = sim.call("GET", &format!("{CALLS}/{id}"), Auth::Bearer(TOKEN), None);
    assert!(default.body["properties"].get("hs_call_title").is_none(), "unrequested properties are not returned: {}", default.text);
    let by_key = sim.call("GET", &format!("{CALLS}/k1?idProperty=crm_sync_key"), Auth::Bearer(TOKEN), None);
    assert_eq!(by_key.body["id"], id.as_str());

    let patched = sim.call("PATCH", &format!("{CALLS}/{id}"), Auth::Bearer(TOKEN), Some(&json!({"properties": {"hs_call_body": "notes"}})));
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["properties"]["hs_call_body"], "notes");

    assert_eq!(sim.call("DELETE", &format!("{CALLS}/{id}"), Auth::Bearer(TOKEN), None).status, 204);
    let gone = sim.call("GET", &format!("{CALLS}/{id}"), Auth::Bearer(TOKEN), None);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body["category"], "OBJECT_NOT_FOUND");
    assert_eq!(gone.body["status"], "error");
    assert!(gone.body["correlationId"].is_string());
    let archived = sim.call("GET", &format!("{CALLS}/{id}?archived=true"), Auth::Bearer(TOKEN), None);
    assert_eq!(archived.body["archived"], true);
    assert!(archived.body["archivedAt"].is_string());

    // A second create with the same unique key is refused; the first record's id is named.
    sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input("k2", None)));
    let dup = sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input("k2", None)));
    assert_eq!(dup.status, 409, "{}", dup.text);
    assert_eq!(dup.body["category"], "CONFLICT");
    assert!(dup.body["message"].as_str().unwrap().contains("Existing ID"));
    let state = sim.state("hubspot", "portal-1");
    assert_eq!(state["keys"]["k2"]["live"], 1);
    assert_eq!(state["keys"]["k1"]["live"], 0);
    assert_eq!(sim.count("hubspot", "portal-1", "POST /hubspot/crm/v3/objects/calls", 409), 1);
}

#[test]
fn batch_endpoints_cap_at_100_and_report_per_record() {
    let sim = CrmSim::start();
    portal(&sim, json!({}));
    let too_many: Vec<Value> = (0..101).map(|i| call_input(&format!("b{i}"), None)).collect();
    let r = sim.call("POST", &format!("{CALLS}/batch/create"), Auth::Bearer(TOKEN), Some(&json!({"inputs": too_many})));
    assert_eq!(r.status, 400);
    assert_eq!(r.body["category"], "VALIDATION_ERROR");
    assert!(r.body["message"].as_str().unwrap().contains("maximum number of inputs supported in a batch is 100"));

    let mut bad = call_input("b1", None);
    bad["properties"]["not_a_property"] = json!("x");
    bad["objectWriteTraceId"] = json!("trace-b1");
    let inputs = vec![call_input("b0", None), bad, call_input("b2", None)];
    let r = sim.call("POST", &format!("{CALLS}/batch/create"), Auth::Bearer(TOKEN), Some(&json!({"inputs": inputs})));
    assert_eq!(r.status, 207, "{}", r.text);
    assert_eq!(r.body["numErrors"], 1);
    assert_eq!(r.body["results"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["errors"][0]["category"], "VALIDATION_ERROR");
    assert_eq!(r.body["errors"][0]["context"]["objectWriteTraceId"][0], "trace-b1");
    assert!(r.body["errors"][0]["message"].as_str().unwrap().contains("PROPERTY_DOESNT_EXIST"));

    let all_ok: Vec<Value> = (10..110).map(|i| call_input(&format!("b{i}"), None)).collect();
    let r = sim.call("POST", &format!("{CALLS}/batch/create"), Auth::Bearer(TOKEN), Some(&json!({"inputs": all_ok})));
    assert_eq!(r.status, 201);
    assert_eq!(r.body["status"], "COMPLETE");
    assert_eq!(sim.records("hubspot", "portal-1", "calls").len(), 102);

    // Upsert by the unique property: created once, then updated in place.
    let up = json!({"inputs": [{"id": "u1", "idProperty": "crm_sync_key", "properties": {"hs_timestamp": "1736937000000", "hs_call_title": "first"}}]});
    let first = sim.call("POST", &format!("{CALLS}/batch/upsert"), Auth::Bearer(TOKEN), Some(&up));
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["results"][0]["new"], true);
    let mut again = up.clone();
    again["inputs"][0]["properties"]["hs_call_title"] = json!("second");
    let second = sim.call("POST", &format!("{CALLS}/batch/upsert"), Auth::Bearer(TOKEN), Some(&again));
    assert_eq!(second.body["results"][0]["new"], false);
    assert_eq!(second.body["results"][0]["id"], first.body["results"][0]["id"]);
    assert_eq!(sim.state("hubspot", "portal-1")["keys"]["u1"]["total"], 1);

    // Batch read reports missing ids as OBJECT_NOT_FOUND in a 207.
    let id = first.body["results"][0]["id"].clone();
    let r = sim.call(
        "POST",
        &format!("{CALLS}/batch/read"),
        Auth::Bearer(TOKEN),
        Some(&json!({"inputs": [{"id": id}, {"id": "999"}], "properties": ["hs_call_title"]})),
    );
    assert_eq!(r.status, 207);
    assert_eq!(r.body["results"][0]["properties"]["hs_call_title"], "second");
    assert_eq!(r.body["errors"][0]["category"], "OBJECT_NOT_FOUND");
}

#[test]
fn search_compares_raw_strings_and_lags_behind_writes() {
    let sim = CrmSim::start();
    portal(&sim, json!({"search_lag_ms": 2000}));
    sim.freeze();
    let search = |prop: &str, value: &str| {
        let body = json!({"filterGroups": [{"filters": [{"propertyName": prop, "operator": "EQ", "value": value}]}], "properties": ["phone", "mobilephone"], "limit": 10});
        let r = sim.call("POST", "/hubspot/crm/v3/objects/contacts/search", Auth::Bearer(TOKEN), Some(&body));
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.headers.get("x-hubspot-ratelimit-remaining").is_none(), "search answers carry no rate-limit headers");
        r.body["total"].as_u64().unwrap()
    };
    assert_eq!(search("phone", "(415) 555-1212"), 1, "EQ matches the string as typed");
    assert_eq!(search("phone", "+14155551212"), 0, "EQ does not normalise: E.164 misses a formatted number");
    assert_eq!(search("hs_searchable_calculated_phone_number", "4155551212"), 1, "the derived digits match");
    assert_eq!(search("hs_searchable_calculated_mobile_number", "301234567"), 1, "country code dropped from +49 30 1234567");
    sim.advance(1000); // the search limiter is per second

    // OR across groups.
    let body = json!({"filterGroups": [
        {"filters": [{"propertyName": "phone", "operator": "EQ", "value": "nope"}]},
        {"filters": [{"propertyName": "firstname", "operator": "EQ", "value": "max"}]}]});
    assert_eq!(sim.call("POST", "/hubspot/crm/v3/objects/contacts/search", Auth::Bearer(TOKEN), Some(&body)).body["total"], 1);

    let created = sim.call(
        "POST",
        "/hubspot/crm/v3/objects/contacts",
        Auth::Bearer(TOKEN),
        Some(&json!({"properties": {"firstname": "New", "phone": "+1 212 555 0100"}})),
    );
    assert_eq!(created.status, 201);
    assert_eq!(search("hs_searchable_calculated_phone_number", "2125550100"), 0, "not indexed yet");
    sim.advance(2000);
    assert_eq!(search("hs_searchable_calculated_phone_number", "2125550100"), 1, "indexed after the lag");

    // Archived contacts are not found.
    sim.advance(1000);
    let jane = contact_id(&sim, "Jane");
    sim.admin("DELETE", &format!("/accounts/hubspot/portal-1/objects/contacts/{jane}"), None);
    assert_eq!(search("phone", "(415) 555-1212"), 0);

    let too_many = json!({"filterGroups": (0..6).map(|_| json!({"filters": [{"propertyName": "phone", "operator": "HAS_PROPERTY"}]})).collect::<Vec<_>>()});
    let r = sim.call("POST", "/hubspot/crm/v3/objects/contacts/search", Auth::Bearer(TOKEN), Some(&too_many));
    assert_eq!(r.status, 400);
}

#[test]
fn ten_second_window_daily_allowance_and_search_limit_at_their_boundaries() {
    let sim = CrmSim::start();
    portal(&sim, json!({"limits": {"daily": 150}}));
    sim.freeze();
    let get = || sim.call("GET", &format!("{CALLS}?limit=1"), Auth::Bearer(TOKEN), None);
    for i in 0..50 {
        let r = get();
        assert_eq!(r.status, 200);
        assert_eq!(r.header_u64("x-hubspot-ratelimit-max"), 100);
        assert_eq!(r.header_u64("x-hubspot-ratelimit-remaining"), 99 - i);
        assert_eq!(r.header_u64("x-hubspot-ratelimit-interval-milliseconds"), 10_000);
    }
    sim.advance(5_000);
    for _ in 0..50 {
        assert_eq!(get().status, 200);
    }
    let over = get();
    assert_eq!(over.status, 429);
    assert_eq!(over.body["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(over.body["errorType"], "RATE_LIMIT");
    assert_eq!(over.body["message"], "You have reached your ten_secondly_rolling limit.");
    sim.advance(4_999);
    assert_eq!(get().status, 429, "one ms before the first 50 leave the window");
    sim.advance(1);
    for _ in 0..50 {
        assert_eq!(get().status, 200, "the first 50 have left the rolling window");
    }
    assert_eq!(get().status, 429, "the second 50 are still in it");
    assert_eq!(get().header_u64("x-hubspot-ratelimit-daily-remaining"), 0, "150 of 150 used today");

    // The daily allowance: exhausted until midnight.
    sim.advance(10_000);
    let daily = get();
    assert_eq!(daily.status, 429);
    assert_eq!(daily.body["policyName"], "DAILY");
    let now = sim.admin("GET", "/clock", None)["now_ms"].as_i64().unwrap();
    let to_midnight = 86_400_000 - now.rem_euclid(86_400_000);
    sim.advance(to_midnight);
    let fresh = get();
    assert_eq!(fresh.status, 200, "a new day");
    assert_eq!(fresh.header_u64("x-hubspot-ratelimit-daily-remaining"), 149);

    // Search: five per second per account, its own limiter.
    let s = || sim.call("POST", "/hubspot/crm/v3/objects/contacts/search", Auth::Bearer(TOKEN), Some(&json!({"filterGroups": []})));
    for _ in 0..5 {
        assert_eq!(s().status, 200);
    }
    let r = s();
    assert_eq!(r.status, 429);
    assert_eq!(r.body["message"], "You have reached your secondly limit.");
    sim.advance(1_000);
    assert_eq!(s().status, 200);
}

#[test]
fn oauth_tokens_expire_refresh_and_revoke() {
    let sim = CrmSim::start();
    sim.freeze(); // before the token is issued, so "expired N second(s) ago" is exact
    let acct = portal(
        &sim,
        json!({"tokens": [{"token": TOKEN, "kind": "static"}, {"token": "hs-oauth-1", "kind": "oauth", "expires_in_s": 60, "refresh_token": "rt-1", "client_id": "cid", "client_secret": "secret", "app": "public-app"}]}),
    );
    assert_eq!(acct["tokens"][1]["refresh_token"], "rt-1");
    let ok = sim.call("GET", &format!("{CALLS}?limit=1"), Auth::Bearer("hs-oauth-1"), None);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header_u64("x-hubspot-ratelimit-max"), 110, "public apps get their own burst");
    assert!(ok.header("x-hubspot-ratelimit-daily").is_none(), "no daily headers for OAuth apps");
    sim.advance(75_000);
    let expired = sim.call("GET", &format!("{CALLS}?limit=1"), Auth::Bearer("hs-oauth-1"), None);
    assert_eq!(expired.status, 401);
    assert_eq!(expired.body["category"], "EXPIRED_AUTHENTICATION");
    assert_eq!(expired.body["message"], "The OAuth token used to make this call expired 15 second(s) ago.");
    assert!(expired.body["context"]["expire time"][0].is_string());

    let bad = sim.form(
        "/hubspot/oauth/v1/token",
        &[("grant_type", "refresh_token"), ("client_id", "cid"), ("client_secret", "secret"), ("refresh_token", "nope")],
        None,
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["status"], "BAD_REFRESH_TOKEN");
    let wrong_client = sim.form(
        "/hubspot/oauth/v1/token",
        &[("grant_type", "refresh_token"), ("client_id", "x"), ("client_secret", "secret"), ("refresh_token", "rt-1")],
        None,
    );
    assert_eq!(wrong_client.body["status"], "BAD_CLIENT_ID");
    let fresh = sim.form(
        "/hubspot/oauth/v1/token",
        &[("grant_type", "refresh_token"), ("client_id", "cid"), ("client_secret", "secret"), ("refresh_token", "rt-1")],
        None,
    );
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(fresh.body["expires_in"], 60);
    let t = fresh.body["access_token"].as_str().unwrap();
    assert_eq!(sim.call("GET", &format!("{CALLS}?limit=1"), Auth::Bearer(t), None).status, 200);
    assert_eq!(sim.call("GET", &format!("/hubspot/oauth/v1/access-tokens/{t}"), Auth::None, None).body["expires_in"], 60);

    sim.admin("POST", &format!("/tokens/{t}/revoke"), None);
    let revoked = sim.call("GET", &format!("{CALLS}?limit=1"), Auth::Bearer(t), None);
    assert_eq!(revoked.status, 401);
    assert_eq!(revoked.body["category"], "INVALID_AUTHENTICATION");
    assert_eq!(sim.call("GET", CALLS, Auth::None, None).status, 401);
}

#[test]
fn permanent_errors_have_hubspots_categories() {
    let sim = CrmSim::start();
    portal(&sim, json!({}));
    let jane = contact_id(&sim, "Jane");

    let mut bad = call_input("e1", None);
    bad["properties"]["hs_call_status"] = json!("DONE");
    let r = sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&bad));
    assert_eq!(r.status, 400);
    assert!(r.body["message"].as_str().unwrap().starts_with("Property values were not valid: ["));
    assert!(r.body["message"].as_str().unwrap().contains("INVALID_OPTION"));

    // A custom property removed in the CRM: writes that name it now fail.
    sim.admin("DELETE", "/accounts/hubspot/portal-1/fields/calls/crm_sync_key", None);
    let r = sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input("e2", None)));
    assert_eq!(r.status, 400);
    let embedded: Value =
        serde_json::from_str(r.body["message"].as_str().unwrap().trim_start_matches("Property values were not valid: ")).unwrap();
    assert_eq!(embedded[0]["error"], "PROPERTY_DOESNT_EXIST");
    assert_eq!(embedded[0]["name"], "crm_sync_key");
    assert_eq!(sim.call("GET", "/hubspot/crm/v3/properties/calls/crm_sync_key", Auth::Bearer(TOKEN), None).status, 404);
    sim.admin("POST", "/accounts/hubspot/portal-1/fields/calls/crm_sync_key", Some(json!({"unique": true})));

    // A contact deleted in the CRM: associating to it fails.
    sim.admin("DELETE", &format!("/accounts/hubspot/portal-1/objects/contacts/{jane}"), None);
    let r = sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input("e3", Some(&jane))));
    assert_eq!(r.status, 400);
    assert_eq!(r.body["subCategory"], "crm.associations.INVALID_OBJECT_IDS");
    assert_eq!(r.body["context"]["ids"][0], jane.as_str());

    // A merged contact's old id resolves to the survivor.
    let max = contact_id(&sim, "Max");
    let other = sim.admin("POST", "/accounts/hubspot/portal-1/objects/contacts", Some(json!({"firstname": "Maximilian"})))["id"]
        .as_str()
        .unwrap()
        .to_string();
    sim.admin("POST", &format!("/accounts/hubspot/portal-1/objects/contacts/{max}/merge"), Some(json!({"into": other})));
    let r = sim.call("GET", &format!("/hubspot/crm/v3/objects/contacts/{max}"), Auth::Bearer(TOKEN), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["id"], other.as_str());

    sim.admin("POST", "/accounts/hubspot/portal-1/permissions/crm.objects.contacts.write/revoke", None);
    let r = sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input("e4", None)));
    assert_eq!(r.status, 403);
    assert_eq!(r.body["category"], "MISSING_SCOPES");
    assert_eq!(r.body["errors"][0]["context"]["requiredGranularScopes"][0], "crm.objects.contacts.write");
    assert_eq!(sim.call("GET", &format!("{CALLS}?limit=1"), Auth::Bearer(TOKEN), None).status, 200, "reads still allowed");
}

#[test]
fn injected_faults() {
    let sim = CrmSim::start();
    portal(&sim, json!({}));
    let create = |key: &str| sim.call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input(key, None)));

    sim.fault("hubspot", "portal-1", json!({"kind": "503", "count": 1}));
    let r = create("f1");
    assert_eq!(r.status, 503);
    assert_eq!(create("f1").status, 201, "the fault fired once");

    sim.fault("hubspot", "portal-1", json!({"kind": "500", "count": 1}));
    let r = create("f2");
    assert_eq!(r.status, 500);
    assert_eq!(r.body["category"], "INTERNAL_ERROR");

    sim.fault("hubspot", "portal-1", json!({"kind": "429", "count": 1, "endpoint": "batch"}));
    assert_eq!(create("f3").status, 201, "the rule only matches batch endpoints");
    let r = sim.call("POST", &format!("{CALLS}/batch/create"), Auth::Bearer(TOKEN), Some(&json!({"inputs": [call_input("f4", None)]})));
    assert_eq!(r.status, 429);
    assert_eq!(r.body["policyName"], "TEN_SECONDLY_ROLLING");

    // Applied, then answered 504: the record exists though the client saw a failure.
    sim.fault("hubspot", "portal-1", json!({"kind": "504", "count": 1, "after_write": true}));
    assert_eq!(create("f5").status, 504);
    assert_eq!(sim.state("hubspot", "portal-1")["keys"]["f5"]["live"], 1);

    sim.fault("hubspot", "portal-1", json!({"kind": "latency", "count": 1, "latency_ms": 300}));
    let t = Instant::now();
    assert_eq!(create("f6").status, 201);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // A timeout holds the request longer than the client waits.
    sim.fault("hubspot", "portal-1", json!({"kind": "timeout", "count": 1, "latency_ms": 2000}));
    let err = sim.try_call("POST", CALLS, Auth::Bearer(TOKEN), Some(&call_input("f7", None)), &[], Some(Duration::from_millis(300)));
    assert!(err.is_err_and(|e| e.is_timeout()));
    assert_eq!(sim.state("hubspot", "portal-1")["keys"]["f7"], Value::Null, "nothing was written");

    // A rate: roughly that share of requests fails.
    sim.admin("DELETE", "/accounts/hubspot/portal-1/faults", None);
    sim.fault("hubspot", "portal-1", json!({"kind": "502", "rate": 0.5}));
    let failed = (0..40).filter(|_| sim.call("GET", &format!("{CALLS}?limit=1"), Auth::Bearer(TOKEN), None).status == 502).count();
    assert!((8..=32).contains(&failed), "{failed} of 40 failed at rate 0.5");
    assert_eq!(sim.count("hubspot", "portal-1", "GET /hubspot/crm/v3/objects/calls", 502), failed as u64);
}

/// By default a unique property on calls is not enforced (HubSpot's behaviour there is
/// unverified and doubtful): a second call with the same key is created, `idProperty` is
/// refused, and the property does not say it is unique.
#[test]
fn activity_unique_properties_are_not_enforced_by_default() {
    let sim = CrmSim::start();
    sim.account(json!({
        "crm": "hubspot", "account": "portal-2", "plan": "starter", "search_lag_ms": 0,
        "tokens": [{"token": "tok-p2", "kind": "static"}],
        "fields": {"calls": {"crm_sync_key": {"type": "text", "unique": true}}}
    }));
    let call = json!({"properties": {"hs_timestamp": "2026-01-01T00:00:00Z", "crm_sync_key": "k1"}});
    for _ in 0..2 {
        let r = sim.call("POST", CALLS, Auth::Bearer("tok-p2"), Some(&call));
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert_eq!(sim.records("hubspot", "portal-2", "calls").len(), 2, "nothing refused the second call with the same key");
    let by_key = sim.call("GET", &format!("{CALLS}/k1?idProperty=crm_sync_key"), Auth::Bearer("tok-p2"), None);
    assert_eq!(by_key.status, 400, "{}", by_key.text);
    let prop = sim.call("GET", "/hubspot/crm/v3/properties/calls/crm_sync_key", Auth::Bearer("tok-p2"), None);
    assert_eq!(prop.body["hasUniqueValue"], false, "{}", prop.text);
}

/// Emails and meetings (CRM-APIS-ACTIVITIES §1.1, §2.1): their own objects, one association
/// per participant (198 email → contact, 200 meeting → contact), the email's headers JSON
/// filling the read-only from/to properties, HubSpot's direction and outcome enums,
/// hs_timestamp required for emails and taken from the start time for meetings, a cancelled
/// meeting as an outcome (never a delete), and keys counted on every object that carries one.
#[test]
fn emails_and_meetings_are_objects_with_one_association_per_participant() {
    let sim = CrmSim::start();
    portal(
        &sim,
        json!({
            "fields": {"calls": {"crm_sync_key": {}}, "emails": {"crm_sync_key": {}}, "meetings": {"crm_sync_key": {}}},
            "key_fields": [{"object": "emails", "field": "crm_sync_key"}, {"object": "meetings", "field": "crm_sync_key"}],
        }),
    );
    let (jane, max) = (contact_id(&sim, "Jane"), contact_id(&sim, "Max"));
    let assoc = |ids: &[&str], type_id: i64| -> Value {
        ids.iter()
            .map(|id| json!({"to": {"id": id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}))
            .collect()
    };
    const EMAILS: &str = "/hubspot/crm/v3/objects/emails";
    const MEETINGS: &str = "/hubspot/crm/v3/objects/meetings";
    let headers = json!({"from": {"email": "rep@acme.example", "firstName": "Rep", "lastName": "One"},
        "to": [{"email": "jane@customer.example", "firstName": "Jane", "lastName": "Doe"}, {"email": "max@customer.example"}], "cc": [], "bcc": []});
    let email = json!({"properties": {"hs_timestamp": "1767225600000", "hs_email_direction": "EMAIL", "hs_email_status": "SENT",
        "hs_email_subject": "Renewal", "hs_email_text": "Hi", "hs_email_headers": headers.to_string(), "crm_sync_key": "acme:email:m1@x:hubspot"},
        "associations": assoc(&[&jane, &max], 198)});
    let created = sim.call("POST", EMAILS, Auth::Bearer(TOKEN), Some(&email));
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let read = sim.call(
        "GET",
        &format!("{EMAILS}/{id}?properties=hs_email_from_email,hs_email_to_email,hs_email_to_firstname&associations=contacts"),
        Auth::Bearer(TOKEN),
        None,
    );
    assert_eq!(read.body["properties"]["hs_email_from_email"], "rep@acme.example", "{}", read.text);
    assert_eq!(read.body["properties"]["hs_email_to_email"], "jane@customer.example");
    assert_eq!(read.body["properties"]["hs_email_to_firstname"], "Jane");
    let linked: Vec<&str> =
        read.body["associations"]["contacts"]["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(linked.len(), 2, "every participant, not only the first: {}", read.text);
    assert!(linked.contains(&jane.as_str()) && linked.contains(&max.as_str()));
    assert_eq!(read.body["associations"]["contacts"]["results"][0]["type"], "email_to_contact");

    // What HubSpot refuses.
    let mut bad = email.clone();
    bad["properties"]["hs_email_headers"] = json!("from: rep@acme.example");
    let r = sim.call("POST", EMAILS, Auth::Bearer(TOKEN), Some(&bad));
    assert_eq!((r.status, r.body["category"].as_str()), (400, Some("VALIDATION_ERROR")), "{}", r.text);
    assert!(r.text.contains("INVALID_JSON"), "{}", r.text);
    let mut bad = email.clone();
    bad["properties"]["hs_email_direction"] = json!("INBOUND");
    let r = sim.call("POST", EMAILS, Auth::Bearer(TOKEN), Some(&bad));
    assert!(r.status == 400 && r.text.contains("INVALID_OPTION"), "no INBOUND/OUTBOUND for emails: {}", r.text);
    let mut bad = email.clone();
    bad["properties"].as_object_mut().unwrap().remove("hs_timestamp");
    assert!(sim.call("POST", EMAILS, Auth::Bearer(TOKEN), Some(&bad)).text.contains("REQUIRED"));
    let mut bad = email.clone();
    bad["associations"] = assoc(&[&jane], 194);
    let r = sim.call("POST", EMAILS, Auth::Bearer(TOKEN), Some(&bad));
    assert!(r.status == 400 && r.text.contains("194 is not a valid association type"), "a call's type id on an email: {}", r.text);

    // A meeting: hs_timestamp from its start; cancelled by its outcome.
    let meeting = json!({"properties": {"hs_meeting_title": "Review", "hs_meeting_start_time": "2026-01-05T15:00:00Z",
        "hs_meeting_end_time": "2026-01-05T15:30:00Z", "hs_meeting_outcome": "SCHEDULED", "hs_meeting_location": "Room 4",
        "crm_sync_key": "acme:meeting:e1@google.com:hubspot"}, "associations": assoc(&[&jane, &max], 200)});
    let created = sim.call("POST", MEETINGS, Auth::Bearer(TOKEN), Some(&meeting));
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["properties"]["hs_timestamp"], "2026-01-05T15:00:00.000Z");
    let mid = created.body["id"].as_str().unwrap().to_string();
    let cancel = json!({"properties": {"hs_meeting_outcome": "CANCELED"}});
    let patched = sim.call("PATCH", &format!("{MEETINGS}/{mid}"), Auth::Bearer(TOKEN), Some(&cancel));
    assert_eq!(patched.body["properties"]["hs_meeting_outcome"], "CANCELED", "{}", patched.text);
    let bad = json!({"properties": {"hs_meeting_outcome": "CANCELLED"}});
    assert_eq!(sim.call("PATCH", &format!("{MEETINGS}/{mid}"), Auth::Bearer(TOKEN), Some(&bad)).status, 400, "HubSpot spells it CANCELED");
    let linked = sim.call("GET", &format!("{MEETINGS}/{mid}?associations=contacts"), Auth::Bearer(TOKEN), None);
    assert_eq!(linked.body["associations"]["contacts"]["results"].as_array().unwrap().len(), 2);
    assert_eq!(linked.body["associations"]["contacts"]["results"][0]["type"], "meeting_to_contact");
    // A v4 association added later, as a late match would.
    let late =
        sim.call("PUT", &format!("/hubspot/crm/v4/objects/meetings/{mid}/associations/default/contacts/{jane}"), Auth::Bearer(TOKEN), None);
    assert_eq!(late.status, 200, "{}", late.text);
    assert_eq!(late.body["results"][0]["associationSpec"]["associationTypeId"], 200);

    // Searchable by crm-sync's key, and counted per key on both objects.
    let search =
        json!({"filterGroups": [{"filters": [{"propertyName": "crm_sync_key", "operator": "EQ", "value": "acme:email:m1@x:hubspot"}]}]});
    let found = sim.call("POST", &format!("{EMAILS}/search"), Auth::Bearer(TOKEN), Some(&search));
    assert_eq!(found.body["total"], 1, "{}", found.text);
    let keys = sim.admin("GET", "/accounts/hubspot/portal-1", None)["keys"].clone();
    assert_eq!(keys["acme:email:m1@x:hubspot"]["total"], 1, "{keys}");
    assert_eq!(keys["acme:meeting:e1@google.com:hubspot"]["total"], 1, "{keys}");
}

/// Contacts as lead capture meets them (CRM-APIS-ACTIVITIES §5.1): the email is the dedupe
/// key in any case (a plain create of a known address is 409 CONFLICT naming the contact,
/// `idProperty=email` finds it whatever its case, an upsert by email updates it); the
/// lifecycle stage moves forward only: a backward set is answered 200 and not applied,
/// unless the stage is cleared first in a request of its own.
#[test]
fn contacts_dedupe_by_email_in_any_case_and_lifecycle_moves_forward_only() {
    let sim = CrmSim::start();
    portal(
        &sim,
        json!({"objects": {"contacts": [{"firstname": "Jane", "email": "Jane.Doe@Customer.example", "lifecyclestage": "salesqualifiedlead"}]}}),
    );
    let jane = contact_id(&sim, "Jane");
    const CONTACTS: &str = "/hubspot/crm/v3/objects/contacts";
    let create = sim.call("POST", CONTACTS, Auth::Bearer(TOKEN), Some(&json!({"properties": {"email": "jane.doe@customer.example"}})));
    assert_eq!((create.status, create.body["category"].as_str()), (409, Some("CONFLICT")), "{}", create.text);
    assert!(create.body["message"].as_str().unwrap().ends_with(&format!("Existing ID: {jane}")), "{}", create.text);
    let read =
        sim.call("GET", &format!("{CONTACTS}/JANE.DOE@customer.example?idProperty=email&properties=email"), Auth::Bearer(TOKEN), None);
    assert_eq!((read.status, read.body["id"].as_str()), (200, Some(jane.as_str())), "{}", read.text);
    let up = sim.call(
        "POST",
        &format!("{CONTACTS}/batch/upsert"),
        Auth::Bearer(TOKEN),
        Some(&json!({"inputs": [{"id": "jane.doe@customer.example", "idProperty": "email", "properties": {"jobtitle": "VP Sales"}}]})),
    );
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(
        (up.body["results"][0]["id"].as_str(), up.body["results"][0]["new"].as_bool()),
        (Some(jane.as_str()), Some(false)),
        "{}",
        up.text
    );

    let stage = |v: &str| {
        sim.call("PATCH", &format!("{CONTACTS}/{jane}"), Auth::Bearer(TOKEN), Some(&json!({"properties": {"lifecyclestage": v}})))
    };
    let now = || {
        sim.call("GET", &format!("{CONTACTS}/{jane}?properties=lifecyclestage"), Auth::Bearer(TOKEN), None).body["properties"]
            ["lifecyclestage"]
            .clone()
    };
    assert_eq!(stage("lead").status, 200, "a backward set is answered as applied");
    assert_eq!(now(), "salesqualifiedlead", "and not applied");
    assert_eq!(stage("customer").status, 200);
    assert_eq!(now(), "customer", "forward is applied");
    assert_eq!(stage("").status, 200);
    assert_eq!(stage("lead").status, 200);
    assert_eq!(now(), "lead", "cleared first, then set back in a request of its own");
    assert_eq!(stage("prospect").status, 400, "not a stage");
}
