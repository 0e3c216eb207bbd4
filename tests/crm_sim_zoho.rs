//! crm-sim's Zoho CRM against CRM-APIS §3, over HTTP: multi-record insert and update with 207,
//! search (204, index lag, no special characters), COQL, deletion, credits, the per-minute pace
//! and the concurrency cap (all the same 429), auth, errors and faults.

use crm_sync_tests::crm_sim::{Auth, CrmSim};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "1000.zoho-token";
const V: &str = "/zoho/crm/v7";

fn org(sim: &CrmSim, extra: Value) -> Value {
    let mut spec = json!({
        "crm": "zoho", "account": "org-1", "plan": "enterprise", "seats": 10, "search_lag_ms": 2000,
        "tokens": [{"token": TOKEN, "kind": "oauth", "expires_in_s": 200000, "refresh_token": "1000.rt", "client_id": "cid", "client_secret": "cs"}],
        "fields": {"Calls": {"Ext_Call_Id": {"unique": true}}},
        "key_field": {"object": "Calls", "field": "Ext_Call_Id"},
        "objects": {"Contacts": [{"First_Name": "Jane", "Last_Name": "Doe", "Phone": "+1 (415) 555-1212"}]}
    });
    if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
        s.extend(e);
    }
    sim.account(spec)
}

fn jane(sim: &CrmSim) -> String {
    sim.records("zoho", "org-1", "Contacts")[0]["id"].as_str().unwrap().to_string()
}

fn call(key: &str, who: Option<&str>) -> Value {
    let mut c = json!({"Subject": "Outbound call", "Call_Type": "Outbound", "Call_Start_Time": "2025-01-15T10:30:00+00:00", "Call_Duration": "02:05", "Ext_Call_Id": key});
    if let Some(w) = who {
        c["Who_Id"] = json!({"id": w});
    }
    c
}

fn insert(sim: &CrmSim, records: Vec<Value>) -> crm_sync_tests::crm_sim::Answer {
    sim.call("POST", &format!("{V}/Calls"), Auth::Zoho(TOKEN), Some(&json!({"data": records, "trigger": []})))
}

#[test]
fn multi_record_insert_reports_each_record() {
    let sim = CrmSim::start();
    org(&sim, json!({}));
    let who = jane(&sim);
    let r = insert(&sim, vec![call("k1", Some(&who)), call("k2", None)]);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["data"][0]["code"], "SUCCESS");
    assert_eq!(r.body["data"][0]["message"], "record added");
    assert_eq!(r.body["data"][0]["status"], "success");
    let id = r.body["data"][0]["details"]["id"].as_str().unwrap().to_string();
    assert!(r.body["data"][0]["details"]["Created_Time"].as_str().unwrap().ends_with("+00:00"));

    let mut no_subject = call("k3", None);
    no_subject.as_object_mut().unwrap().remove("Subject");
    let mut zero = call("k4", None);
    zero["Call_Duration"] = json!("00:00");
    let mut unknown = call("k5", None);
    unknown["Not_A_Field"] = json!("ignored");
    let r = insert(&sim, vec![no_subject, zero, call("k1", None), unknown]);
    assert_eq!(r.status, 207, "{}", r.text);
    let d = &r.body["data"];
    assert_eq!(d[0]["code"], "MANDATORY_NOT_FOUND");
    assert_eq!(d[0]["details"]["api_name"], "Subject");
    assert_eq!(d[0]["details"]["json_path"], "$.data[0].Subject");
    assert_eq!(d[1]["code"], "DEPENDENT_MISMATCH");
    assert_eq!(d[1]["message"], "Call Duration can not be zero.");
    assert_eq!(d[2]["code"], "DUPLICATE_DATA");
    assert_eq!(d[2]["details"]["duplicate_record"]["id"], id.as_str());
    assert_eq!(d[3]["code"], "SUCCESS", "unknown fields are ignored, not rejected");
    let k5 = sim.records("zoho", "org-1", "Calls").into_iter().find(|r| r["fields"]["Ext_Call_Id"] == "k5").unwrap();
    assert!(k5["fields"].get("Not_A_Field").is_none());

    let r = insert(&sim, vec![json!({"Call_Type": "Sideways"})]);
    assert_eq!(r.status, 400, "all records failed");
    let r = insert(&sim, (0..101).map(|i| call(&format!("m{i}"), None)).collect());
    assert_eq!(r.status, 400);
    assert_eq!(r.body["code"], "LIMIT_EXCEEDED");

    sim.admin("DELETE", &format!("/accounts/zoho/org-1/objects/Contacts/{who}"), None);
    let r = insert(&sim, vec![call("k6", Some(&who))]);
    assert_eq!(r.body["data"][0]["code"], "INVALID_DATA");
    assert_eq!(r.body["data"][0]["details"]["api_name"], "Who_Id");
}

#[test]
fn read_update_delete_and_deleted_listing() {
    let sim = CrmSim::start();
    org(&sim, json!({}));
    let id = insert(&sim, vec![call("k1", None)]).body["data"][0]["details"]["id"].as_str().unwrap().to_string();
    let r = sim.call("GET", &format!("{V}/Calls/{id}"), Auth::Zoho(TOKEN), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"][0]["Call_Duration_in_seconds"], 125);
    assert_eq!(r.body["data"][0]["Ext_Call_Id"], "k1");

    let put = sim.call("PUT", &format!("{V}/Calls/{id}"), Auth::Zoho(TOKEN), Some(&json!({"data": [{"Description": "notes"}]})));
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.body["data"][0]["message"], "record updated");
    let stale = sim.call_with(
        "PUT",
        &format!("{V}/Calls/{id}"),
        Auth::Zoho(TOKEN),
        Some(&json!({"data": [{"Description": "x"}]})),
        &[("If-Unmodified-Since", "2000-01-01T00:00:00+00:00")],
        None,
    );
    assert_eq!(stale.status, 412);
    assert_eq!(stale.body["data"][0]["code"], "ALREADY_MODIFIED");
    let bulk = sim.call(
        "PUT",
        &format!("{V}/Calls"),
        Auth::Zoho(TOKEN),
        Some(&json!({"data": [{"id": id, "Call_Result": "ok"}, {"id": "123", "Call_Result": "x"}]})),
    );
    assert_eq!(bulk.status, 207);
    assert_eq!(bulk.body["data"][1]["message"], "the id given seems to be invalid");

    let del = sim.call("DELETE", &format!("{V}/Calls/{id}"), Auth::Zoho(TOKEN), None);
    assert_eq!(del.body["data"][0]["message"], "record deleted");
    let gone = sim.call("GET", &format!("{V}/Calls/{id}"), Auth::Zoho(TOKEN), None);
    assert_eq!(gone.status, 204);
    assert!(gone.text.is_empty());
    let r = sim.call("PUT", &format!("{V}/Calls/{id}"), Auth::Zoho(TOKEN), Some(&json!({"data": [{"Description": "x"}]})));
    assert_eq!(r.status, 400);
    assert_eq!(r.body["data"][0]["code"], "INVALID_DATA");
    let listed = sim.call("GET", &format!("{V}/Calls/deleted?type=recycle"), Auth::Zoho(TOKEN), None);
    assert_eq!(listed.body["data"][0]["id"], id.as_str());
    assert_eq!(listed.body["data"][0]["type"], "recycle");
    assert_eq!(sim.call("GET", &format!("{V}/Calls/deleted?type=permanent"), Auth::Zoho(TOKEN), None).status, 204);
    assert_eq!(sim.call("GET", &format!("{V}/Tasks_Nope"), Auth::Zoho(TOKEN), None).body["code"], "INVALID_MODULE");
}

#[test]
fn search_lags_and_coql_does_not() {
    let sim = CrmSim::start();
    org(&sim, json!({}));
    sim.freeze();
    let search = |q: &str| sim.call("GET", &format!("{V}/Contacts/search?{q}"), Auth::Zoho(TOKEN), None);
    let r = search("phone=4155551212");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"][0]["Phone"], "+1 (415) 555-1212", "stored as typed");
    assert_eq!(r.body["info"]["more_records"], false);
    assert_eq!(search("phone=%2B14155551212").status, 400, "special characters are refused");
    let none = search("phone=4155550000");
    assert_eq!(none.status, 204, "nothing matches: 204, no body");
    assert_eq!(search("criteria=(Phone:equals:555-1212)").status, 200, "equals behaves like contains");
    assert_eq!(search("criteria=(Last_Name:starts_with:Do)").status, 200);

    let r = sim.call(
        "POST",
        &format!("{V}/Contacts"),
        Auth::Zoho(TOKEN),
        Some(&json!({"data": [{"Last_Name": "New", "Mobile": "212-555-0100"}]})),
    );
    assert_eq!(r.status, 201);
    assert_eq!(search("phone=2125550100").status, 204, "a fresh record is not yet searchable");

    // COQL reads the write at once.
    insert(&sim, vec![call("k1", None)]);
    let coql = |q: &str| sim.call("POST", &format!("{V}/coql"), Auth::Zoho(TOKEN), Some(&json!({"select_query": q})));
    let r = coql("select id, Ext_Call_Id from Calls where Ext_Call_Id = 'k1' limit 10");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"][0]["Ext_Call_Id"], "k1");
    assert_eq!(r.body["info"]["count"], 1);
    assert_eq!(coql("select id from Calls where Ext_Call_Id = 'nope'").status, 204);
    assert_eq!(coql("select id from Calls where Ext_Call_Id in ('k1', 'k2') and Subject like 'Outbound%'").body["info"]["count"], 1);
    assert_eq!(coql("select id from Calls").body["code"], "SYNTAX_ERROR", "COQL needs a where clause");

    sim.advance(2000);
    assert_eq!(search("phone=2125550100").status, 200, "indexed after the lag");

    let fields = sim.call("GET", &format!("{V}/settings/fields?module=Calls"), Auth::Zoho(TOKEN), None);
    assert!(fields.body["fields"].as_array().unwrap().iter().any(|f| f["api_name"] == "Ext_Call_Id" && f["custom_field"] == true));
}

#[test]
fn credits_pace_and_concurrency_all_answer_the_same_429() {
    let sim = CrmSim::start();
    org(&sim, json!({"limits": {"credits_per_24h": 20, "per_minute": 1000}}));
    let t0 = sim.freeze();
    // 30 records cost 3 credits; the header appears once half the credits are spent.
    let r = insert(&sim, (0..30).map(|i| call(&format!("c{i}"), None)).collect());
    assert_eq!(r.status, 201);
    assert!(r.header("x-api-credits-remaining").is_none(), "3 of 20 spent");
    assert!(r.header("x-accesstoken-reset").is_some());
    for _ in 0..7 {
        sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None);
    }
    let r = sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None);
    assert_eq!(r.header_u64("x-api-credits-remaining"), 9, "11 of 20 spent");
    sim.advance(1000);
    for _ in 0..9 {
        assert_eq!(sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None).status, 200);
    }
    let out = sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None);
    assert_eq!(out.status, 429);
    let throttle_body = out.body.clone();
    assert_eq!(throttle_body["code"], "TOO_MANY_REQUESTS");
    assert!(out.header("retry-after").is_none());
    sim.advance(t0 + 86_400_000 - 1 - sim.admin("GET", "/clock", None)["now_ms"].as_i64().unwrap());
    assert_eq!(sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None).status, 429);
    sim.advance(1);
    assert_eq!(
        sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None).status,
        200,
        "the insert's 3 credits are freed 24 h later"
    );

    // The per-minute pace.
    sim.admin("PATCH", "/accounts/zoho/org-1/limits", Some(json!({"credits_per_24h": 100000, "per_minute": 3})));
    sim.advance(60_000);
    for _ in 0..3 {
        assert_eq!(sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None).status, 200);
    }
    let paced = sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None);
    assert_eq!(paced.status, 429);
    assert_eq!(paced.body, throttle_body, "nothing tells the limits apart");
    sim.advance(60_000);

    // The concurrency cap.
    sim.admin("PATCH", "/accounts/zoho/org-1/limits", Some(json!({"concurrency": 1, "per_minute": 1000})));
    sim.fault("zoho", "org-1", json!({"kind": "latency", "latency_ms": 3000, "count": 1}));
    std::thread::scope(|s| {
        let slow = s.spawn(|| sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None).status);
        sim.wait_in_flight("zoho", "org-1", 1);
        let r = sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None);
        assert_eq!(r.status, 429);
        assert_eq!(r.body, throttle_body);
        assert_eq!(slow.join().unwrap(), 200);
    });
}

#[test]
fn auth_permissions_and_faults() {
    let sim = CrmSim::start();
    org(
        &sim,
        json!({"tokens": [{"token": TOKEN, "kind": "oauth", "expires_in_s": 3600, "refresh_token": "1000.rt", "client_id": "cid", "client_secret": "cs"}]}),
    );
    sim.freeze();
    let r = sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Bearer(TOKEN), None);
    assert_eq!(r.status, 401, "Zoho wants Zoho-oauthtoken, not Bearer");
    sim.advance(3_600_000);
    let r = sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(TOKEN), None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body, json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}));

    let refresh = |rt: &str| {
        sim.call(
            "POST",
            &format!("/zoho/oauth/v2/token?refresh_token={rt}&client_id=cid&client_secret=cs&grant_type=refresh_token"),
            Auth::None,
            None,
        )
    };
    let bad = refresh("nope");
    assert_eq!(bad.status, 200, "a failed refresh is HTTP 200");
    assert_eq!(bad.body["error"], "invalid_code");
    let ok = refresh("1000.rt");
    assert_eq!(ok.body["api_domain"], format!("{}/zoho", sim.url));
    assert_eq!(ok.body["expires_in"], 3600);
    let token = ok.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(&token), None).status, 204, "no calls yet");
    for _ in 0..9 {
        assert_eq!(refresh("1000.rt").status, 200);
    }
    let throttled = refresh("1000.rt");
    assert_eq!(throttled.status, 200, "Zoho answers a throttled mint with HTTP 200");
    assert_eq!(throttled.body["error"], "Access Denied", "at most ten access tokens per ten minutes");
    sim.advance(600_000);
    assert_eq!(refresh("1000.rt").status, 200);

    sim.admin("POST", "/accounts/zoho/org-1/permissions/Calls.create/revoke", None);
    let r = sim.call("POST", &format!("{V}/Calls"), Auth::Zoho(&token), Some(&json!({"data": [call("p1", None)]})));
    assert_eq!(r.status, 403);
    assert_eq!(r.body["code"], "NO_PERMISSION");
    assert_eq!(r.body["details"]["permissions"][0], "Crm_Implied_Create_Calls");
    sim.admin("POST", "/accounts/zoho/org-1/permissions/Calls.create/grant", None);

    sim.fault("zoho", "org-1", json!({"kind": "500", "count": 1}));
    assert_eq!(sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(&token), None).body["code"], "INTERNAL_ERROR");
    sim.fault("zoho", "org-1", json!({"kind": "429", "count": 1}));
    assert_eq!(sim.call("GET", &format!("{V}/Calls?fields=Subject"), Auth::Zoho(&token), None).status, 429);
    sim.fault("zoho", "org-1", json!({"kind": "timeout", "count": 1, "latency_ms": 1500, "after_write": true}));
    let t = sim.try_call(
        "POST",
        &format!("{V}/Calls"),
        Auth::Zoho(&token),
        Some(&json!({"data": [call("t1", None)]})),
        &[],
        Some(Duration::from_millis(300)),
    );
    assert!(t.is_err_and(|e| e.is_timeout()));
    let coql = sim.call(
        "POST",
        &format!("{V}/coql"),
        Auth::Zoho(&token),
        Some(&json!({"select_query": "select id from Calls where Ext_Call_Id = 't1'"})),
    );
    assert_eq!(coql.status, 200, "the timed-out insert was applied: COQL finds it before any retry");
}

/// Meetings are Events (CRM-APIS-ACTIVITIES §2.3): title and times mandatory, the end not
/// before the start, Participants by type (contacts must exist; bare emails allowed) read
/// back with their names, `$se_module` required with What_Id, and cancellation only through
/// the cancel action, only while invitees exist and before the meeting ends.
#[test]
fn events_take_participants_and_cancel_only_under_zohos_conditions() {
    let sim = CrmSim::start();
    org(
        &sim,
        json!({"fields": {"Calls": {"Ext_Call_Id": {"unique": true}}, "Events": {"Crm_Sync_Key": {"unique": true}}},
               "key_fields": [{"object": "Events", "field": "Crm_Sync_Key"}]}),
    );
    let jane = jane(&sim);
    let event = |key: &str, start: &str, end: &str, participants: Value| {
        json!({"Event_Title": "Quarterly review", "Start_DateTime": start, "End_DateTime": end, "Venue": "Room 4",
               "Participants": participants, "Who_Id": {"id": jane}, "Crm_Sync_Key": key})
    };
    let insert = |e: Value| sim.call("POST", &format!("{V}/Events"), Auth::Zoho(TOKEN), Some(&json!({"data": [e]})));
    let people = json!([{"type": "contact", "participant": jane}, {"type": "email", "participant": "guest@elsewhere.example"}]);
    let r = insert(event("k1", "2030-01-05T15:00:00+00:00", "2030-01-05T15:30:00+00:00", people.clone()));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["data"][0]["details"]["id"].as_str().unwrap().to_string();
    let read = sim.call("GET", &format!("{V}/Events/{id}"), Auth::Zoho(TOKEN), None);
    let ps = read.body["data"][0]["Participants"].as_array().cloned().unwrap_or_default();
    assert_eq!(ps.len(), 2, "{}", read.text);
    assert_eq!(ps[0]["name"], "Jane Doe");
    assert_eq!(ps[1]["Email"], "guest@elsewhere.example");

    let cancel = |id: &str| {
        sim.call(
            "POST",
            &format!("{V}/Events/{id}/actions/cancel"),
            Auth::Zoho(TOKEN),
            Some(&json!({"data": [{"send_cancelling_mail": false}]})),
        )
    };
    let r = cancel(&id);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(sim.call("GET", &format!("{V}/Events/{id}"), Auth::Zoho(TOKEN), None).body["data"][0]["$event_cancelled"], true);
    // No invitees, or already over: cannot be cancelled (the writer marks it another way).
    let alone = insert(event("k2", "2030-01-06T15:00:00+00:00", "2030-01-06T15:30:00+00:00", json!([])));
    let alone_id = alone.body["data"][0]["details"]["id"].as_str().unwrap().to_string();
    assert_eq!(cancel(&alone_id).status, 400);
    let past = insert(event("k3", "2020-01-06T15:00:00+00:00", "2020-01-06T15:30:00+00:00", people.clone()));
    let past_id = past.body["data"][0]["details"]["id"].as_str().unwrap().to_string();
    assert_eq!(cancel(&past_id).status, 400, "already ended");

    // What Zoho refuses.
    let backwards = insert(event("k4", "2030-01-05T15:00:00+00:00", "2030-01-05T14:00:00+00:00", json!([])));
    assert_eq!(backwards.status, 400, "{}", backwards.text);
    let mut no_title = event("k5", "2030-01-05T15:00:00+00:00", "2030-01-05T15:30:00+00:00", json!([]));
    no_title.as_object_mut().unwrap().remove("Event_Title");
    assert_eq!(insert(no_title).body["data"][0]["code"], "MANDATORY_NOT_FOUND");
    let stranger =
        insert(event("k6", "2030-01-05T15:00:00+00:00", "2030-01-05T15:30:00+00:00", json!([{"type": "contact", "participant": "999"}])));
    assert_eq!(stranger.body["data"][0]["code"], "INVALID_DATA", "{}", stranger.text);
    let mut what = event("k7", "2030-01-05T15:00:00+00:00", "2030-01-05T15:30:00+00:00", json!([]));
    what["What_Id"] = json!({"id": "123"});
    assert_eq!(insert(what).body["data"][0]["details"]["api_name"], "$se_module");
    assert_eq!(sim.state("zoho", "org-1")["keys"]["k1"]["live"], 1, "keys counted on Events too");
}

/// Emails cannot be inserted as records (CRM-APIS-ACTIVITIES §1.3): `associate_email`
/// attaches one to a contact, with from, to, Message-ID, direction and time mandatory;
/// `email_available` finds it by its Message-ID; a second association of the same email is
/// accepted (the harsher case), so a writer must look first; insert into "Emails" is an
/// INVALID_MODULE; without the emails scope it is refused.
#[test]
fn emails_are_associated_with_a_record_and_found_by_message_id() {
    let sim = CrmSim::start();
    org(&sim, json!({"key_fields": [{"object": "Emails", "field": "original_message_id"}]}));
    let jane = jane(&sim);
    let email = json!({"from": {"user_name": "Rep One", "email": "rep@acme.example"}, "to": [{"user_name": "Jane", "email": "jane@customer.example"}],
        "cc": [], "subject": "Renewal", "content": "<p>Hi</p>", "mail_format": "html", "date_time": "2026-01-05T10:30:00+00:00", "sent": true,
        "original_message_id": "<m1@mail.acme.example>"});
    let associate = |e: &Value| {
        sim.call("POST", &format!("{V}/Contacts/{jane}/actions/associate_email"), Auth::Zoho(TOKEN), Some(&json!({"Emails": [e]})))
    };
    let available = || {
        sim.call("GET", &format!("{V}/actions/email_available?orginal_message_id=%3Cm1%40mail.acme.example%3E"), Auth::Zoho(TOKEN), None)
    };
    assert_eq!(available().body["available"], false);
    sim.freeze();
    let r = associate(&email);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["Emails"][0]["code"], "SUCCESS");
    // Whether it lags is not known: it lags like search here (2 s), the harsher case.
    assert_eq!(available().body["available"], false, "not yet indexed");
    sim.advance(2_000);
    let a = available();
    assert_eq!(a.body["available"], true, "{}", a.text);
    assert_eq!((&a.body["record"]["id"], &a.body["record"]["module"]["api_name"]), (&json!(jane), &json!("Contacts")));
    let related = sim.call("GET", &format!("{V}/Contacts/{jane}/Emails"), Auth::Zoho(TOKEN), None);
    assert_eq!(related.body["Emails"].as_array().map(Vec::len), Some(1), "{}", related.text);
    assert_eq!(associate(&email).status, 201, "a second association is not refused");
    assert_eq!(sim.state("zoho", "org-1")["keys"]["<m1@mail.acme.example>"]["live"], 2, "two copies: a writer must look first");

    let mut bad = email.clone();
    bad.as_object_mut().unwrap().remove("original_message_id");
    assert_eq!(associate(&bad).body["Emails"][0]["code"], "REQUIRED_PARAM_MISSING");
    let mut bad = email.clone();
    bad["to"] = json!([]);
    assert_eq!(associate(&bad).status, 400);
    let r = sim.call("POST", &format!("{V}/Emails"), Auth::Zoho(TOKEN), Some(&json!({"data": [{"subject": "x"}]})));
    assert_eq!(r.body["code"], "INVALID_MODULE", "{}", r.text);
    let r = sim.call("POST", &format!("{V}/Contacts/999/actions/associate_email"), Auth::Zoho(TOKEN), Some(&json!({"Emails": [email]})));
    assert_eq!(r.status, 400, "an unknown record: {}", r.text);
    sim.admin("POST", "/accounts/zoho/org-1/permissions/Emails.create/revoke", None);
    assert_eq!(associate(&email).status, 403, "the emails scope");
}
