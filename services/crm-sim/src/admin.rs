//! The simulator's own API, under `/admin`: not part of any CRM. Tests and dev mode use it to
//! create accounts, tokens, contacts and custom fields; to change the CRM behind the pipeline's
//! back (delete or merge a contact, edit a call as a person would, remove a field, revoke a
//! permission, expire a token); to inject faults; to move the clock; and to read exactly what
//! each account holds and how many requests it answered, by endpoint and status.

use crate::crms;
use crate::faults::FaultRule;
use crate::gate::json;
use crate::state::{new_account, Crm, FieldDef, KeyField, Record, SharedSim, Token, TokenKind};
use crate::tokens;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

fn bad(msg: impl ToString) -> Response {
    json(400, json!({"error": msg.to_string()}))
}

fn missing(msg: impl ToString) -> Response {
    json(404, json!({"error": msg.to_string()}))
}

fn parse_crm(s: &str) -> Result<Crm, Response> {
    Crm::parse(s).ok_or_else(|| bad(format!("unknown crm {s:?}: hubspot, salesforce, zoho or pipedrive")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Fixed token string (dev configs name it); random when absent.
    pub token: Option<String>,
    #[serde(default = "oauth_kind")]
    pub kind: TokenKind,
    pub app: Option<String>,
    /// OAuth access-token lifetime; each CRM's default when absent.
    pub expires_in_s: Option<i64>,
    pub refresh_token: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// Whether each refresh rotates the refresh token (default: Salesforce and Pipedrive).
    pub rotate_refresh: Option<bool>,
}

fn oauth_kind() -> TokenKind {
    TokenKind::Oauth
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub crm: Crm,
    pub account: String,
    pub plan: Option<String>,
    /// Users, licenses or seats: the multiplier the plan's allowance is computed from.
    pub seats: Option<u64>,
    /// Overrides of the plan's limits, by name (see GET /admin/accounts/{crm}/{account}).
    pub limits: Option<Value>,
    #[serde(default)]
    pub tz_offset_min: i32,
    /// How long after a write the CRM's search index sees it.
    pub search_lag_ms: Option<i64>,
    /// HubSpot: enforce unique properties on activity objects (default false: unverified).
    #[serde(default)]
    pub enforce_activity_unique: bool,
    /// HubSpot: allow creating properties on activity objects (default false: unverified).
    #[serde(default)]
    pub activity_property_create: bool,
    /// Zoho: accept unique fields on Calls, Tasks and Events (default false: unverified).
    #[serde(default)]
    pub activity_unique_fields: bool,
    /// Salesforce: the org's lead assignment and duplicate rules (none unless set).
    #[serde(default)]
    pub sf_lead_rules: Option<crate::salesforce::leads::LeadRules>,
    /// Zoho: lead assignment rules, rule id → the user (id or address) it assigns leads to.
    #[serde(default)]
    pub zoho_lead_rules: BTreeMap<String, String>,
    pub key_field: Option<KeyField>,
    /// More objects carrying a key (an account that takes emails and meetings too).
    #[serde(default)]
    pub key_fields: Vec<KeyField>,
    #[serde(default)]
    pub seed: u64,
    /// Custom fields: object → name → definition.
    #[serde(default)]
    pub fields: BTreeMap<String, BTreeMap<String, FieldDef>>,
    #[serde(default)]
    pub tokens: Vec<NewToken>,
    /// Records to start with: object → list of native field maps.
    #[serde(default)]
    pub objects: BTreeMap<String, Vec<Map<String, Value>>>,
}

/// Default access-token lifetime per CRM (Salesforce's is the org session timeout).
fn default_ttl(crm: Crm) -> i64 {
    match crm {
        Crm::Hubspot => 1800,
        Crm::Salesforce => 7200,
        Crm::Zoho | Crm::Pipedrive => 3600,
    }
}

/// Search index lag per CRM by default: HubSpot, Salesforce SOSL and Zoho search lag behind
/// writes (CRM-APIS §5.3); Pipedrive's is not documented.
fn default_lag(crm: Crm) -> i64 {
    match crm {
        Crm::Hubspot | Crm::Zoho => 2_000,
        Crm::Salesforce => 1_000,
        Crm::Pipedrive => 0,
    }
}

pub fn create_account(sim: &SharedSim, req: NewAccount) -> Result<Value, String> {
    let now = sim.clock.now_ms();
    let crm = req.crm;
    let plan = req.plan.clone().unwrap_or_else(|| crms::default_plan(crm).to_string());
    let (limits, mut schema) = crms::defaults(crm, &plan, req.seats.unwrap_or(10), req.limits.as_ref())?;
    for (object, fields) in req.fields {
        if !crms::objects(crm).contains(&object.as_str()) {
            return Err(format!("unknown object {object:?} for {}: {:?}", crm.as_str(), crms::objects(crm)));
        }
        for (name, mut def) in fields {
            def.custom = true;
            schema.entry(object.clone()).or_default().insert(name, def);
        }
    }
    let mut w = sim.lock();
    if w.accounts.contains_key(&(crm, req.account.clone())) {
        return Err(format!("{} account {:?} exists", crm.as_str(), req.account));
    }
    let mut acct = new_account(crm, &req.account, &plan, limits, crate::limits::Usage::new(req.tz_offset_min), schema, req.seed);
    acct.tz_offset_min = req.tz_offset_min;
    acct.search_lag_ms = req.search_lag_ms.unwrap_or(default_lag(crm));
    acct.enforce_activity_unique = req.enforce_activity_unique;
    acct.activity_property_create = req.activity_property_create;
    acct.activity_unique_fields = req.activity_unique_fields;
    if let Some(rules) = req.sf_lead_rules {
        if crm != Crm::Salesforce {
            return Err(format!("sf_lead_rules is for Salesforce accounts, not {}", crm.as_str()));
        }
        acct.sf_setup.lead_rules = rules;
    }
    if !req.zoho_lead_rules.is_empty() && crm != Crm::Zoho {
        return Err(format!("zoho_lead_rules is for Zoho accounts, not {}", crm.as_str()));
    }
    acct.zoho_lead_rules = req.zoho_lead_rules;
    acct.key_fields = req.key_field.into_iter().chain(req.key_fields).collect();
    acct.ensure_indexes();
    acct.owner_id = match crm {
        Crm::Salesforce => crate::salesforce::new_id(&mut acct, "User"),
        Crm::Zoho => crate::zoho::new_id(&mut acct),
        _ => "1000001".into(),
    };
    // The integration's own user: the owner of whatever a write names no owner for.
    let mut me = Record {
        id: acct.owner_id.clone(),
        fields: crate::users::integration_user(crm),
        created_ms: now,
        updated_ms: now,
        deleted_ms: None,
        indexed_at_ms: now,
        associations: Default::default(),
        merged_into: None,
    };
    crms::derive(crm, crate::users::table(crm), &mut me);
    acct.table(crate::users::table(crm)).insert(me);
    for (object, records) in req.objects {
        if !crms::objects(crm).contains(&object.as_str()) {
            return Err(format!("unknown object {object:?} for {}: {:?}", crm.as_str(), crms::objects(crm)));
        }
        for fields in records {
            insert_record(&mut acct, &object, fields, now);
        }
    }
    w.accounts.insert((crm, req.account.clone()), acct);
    let mut issued = vec![];
    for t in req.tokens {
        issued.push(issue_token(&mut w, crm, &req.account, t, now)?);
    }
    let acct = w.account(crm, &req.account).unwrap();
    let mut summary = summary(acct, now);
    summary["tokens"] = json!(issued);
    Ok(summary)
}

fn insert_record(acct: &mut crate::state::Account, object: &str, fields: Map<String, Value>, now: i64) -> Record {
    let id = crms::new_id(acct.crm, acct, object);
    let mut r = Record {
        id,
        fields,
        created_ms: now,
        updated_ms: now,
        deleted_ms: None,
        indexed_at_ms: now,
        associations: Default::default(),
        merged_into: None,
    };
    crms::derive(acct.crm, object, &mut r);
    acct.table(object).insert(r.clone());
    r
}

fn issue_token(w: &mut crate::state::World, crm: Crm, account: &str, t: NewToken, now: i64) -> Result<Value, String> {
    let app = t.app.unwrap_or_else(|| "crm-sync".into());
    let access = t.token.unwrap_or_else(|| tokens::random_token(&format!("{}-", crm.as_str())));
    if w.tokens.contains_key(&access) {
        return Err(format!("token {access:?} exists"));
    }
    let (refresh, expires) = match t.kind {
        TokenKind::Static => (None, None),
        TokenKind::Oauth => {
            let ttl = t.expires_in_s.unwrap_or(default_ttl(crm));
            let client_id = t.client_id.unwrap_or_else(|| "sim-client".into());
            let client_secret = t.client_secret.unwrap_or_else(|| "sim-secret".into());
            let rt = match t.refresh_token {
                Some(rt) => {
                    w.refresh_tokens.insert(
                        rt.clone(),
                        crate::state::RefreshToken {
                            crm,
                            account: account.into(),
                            client_id,
                            client_secret,
                            app: app.clone(),
                            revoked: false,
                            access_ttl_s: ttl,
                            minted: Default::default(),
                            rotate: tokens::rotates_by_default(crm),
                        },
                    );
                    rt
                }
                None => tokens::new_refresh_token(w, crm, account, &client_id, &client_secret, &app, ttl),
            };
            if let (Some(rotate), Some(r)) = (t.rotate_refresh, w.refresh_tokens.get_mut(&rt)) {
                r.rotate = rotate;
            }
            (Some(rt), Some(now + ttl * 1000))
        }
    };
    w.tokens.insert(
        access.clone(),
        Token {
            crm,
            account: account.into(),
            kind: t.kind,
            app: app.clone(),
            issued_ms: now,
            expires_at_ms: expires,
            revoked: false,
            refresh_token: refresh.clone(),
        },
    );
    Ok(json!({"access_token": access, "refresh_token": refresh, "expires_at_ms": expires, "kind": t.kind, "app": app}))
}

fn counters_json(c: &BTreeMap<String, BTreeMap<u16, u64>>) -> Value {
    let mut out = Map::new();
    for (endpoint, by_status) in c {
        let m: Map<String, Value> = by_status.iter().map(|(s, n)| (s.to_string(), json!(n))).collect();
        out.insert(endpoint.clone(), Value::Object(m));
    }
    Value::Object(out)
}

fn keys_json(acct: &crate::state::Account) -> Value {
    let m: Map<String, Value> = acct.keys().into_iter().map(|(k, (total, live))| (k, json!({"total": total, "live": live}))).collect();
    Value::Object(m)
}

fn record_json(r: &Record) -> Value {
    json!({
        "id": r.id, "fields": r.fields, "created_ms": r.created_ms, "updated_ms": r.updated_ms,
        "deleted": r.deleted_ms.is_some(), "deleted_ms": r.deleted_ms, "associations": r.associations,
        "merged_into": r.merged_into, "indexed_at_ms": r.indexed_at_ms,
    })
}

fn summary(acct: &mut crate::state::Account, now: i64) -> Value {
    let objects: Map<String, Value> =
        acct.objects.iter().map(|(k, t)| (k.clone(), json!({"total": t.len(), "live": t.live().count()}))).collect();
    let usage = json!({
        "daily_used": acct.usage.daily.used(now),
        "rolling_24h_used": acct.usage.day_rolling.used(now),
        "minute_used": acct.usage.minute.used(now),
        "burst_used": acct.usage.burst.iter_mut().map(|(k, w)| (k.clone(), json!(w.used(now)))).collect::<Map<String, Value>>(),
        "search_used": acct.usage.search.iter_mut().map(|(k, w)| (k.clone(), json!(w.used(now)))).collect::<Map<String, Value>>(),
        "in_flight": acct.in_flight.len(),
    });
    json!({
        "crm": acct.crm, "account": acct.id, "plan": acct.plan, "limits": acct.limits, "usage": usage,
        "objects": objects, "schema": acct.schema, "revoked": acct.revoked, "faults": acct.faults,
        "counters": counters_json(&acct.counters), "keys": keys_json(acct), "owner_id": acct.owner_id,
        "search_lag_ms": acct.search_lag_ms, "key_field": acct.key_fields.first(), "key_fields": acct.key_fields, "enforce_activity_unique": acct.enforce_activity_unique,
    })
}

type AcctPath = Path<(String, String)>;

async fn post_account(State(sim): State<SharedSim>, body: axum::body::Bytes) -> Response {
    let req: NewAccount = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("bad account: {e}")),
    };
    match create_account(&sim, req) {
        Ok(v) => json(201, v),
        Err(e) => bad(e),
    }
}

/// Runs `f` on an account named in the path, or answers 404.
fn with_acct(sim: &SharedSim, crm: &str, account: &str, f: impl FnOnce(&mut crate::state::Account, i64) -> Response) -> Response {
    let crm = match parse_crm(crm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = sim.clock.now_ms();
    let mut w = sim.lock();
    match w.account(crm, account) {
        Some(a) => f(a, now),
        None => missing(format!("no {} account {account:?}", crm.as_str())),
    }
}

async fn get_account(State(sim): State<SharedSim>, Path((crm, account)): AcctPath) -> Response {
    with_acct(&sim, &crm, &account, |a, now| json(200, summary(a, now)))
}

async fn delete_account(State(sim): State<SharedSim>, Path((crm, account)): AcctPath) -> Response {
    let crm = match parse_crm(&crm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut w = sim.lock();
    w.accounts.remove(&(crm, account.clone()));
    w.tokens.retain(|_, t| !(t.crm == crm && t.account == account));
    w.refresh_tokens.retain(|_, t| !(t.crm == crm && t.account == account));
    StatusCode::NO_CONTENT.into_response()
}

async fn list_accounts(State(sim): State<SharedSim>) -> Response {
    let w = sim.lock();
    let list: Vec<Value> = w.accounts.keys().map(|(c, a)| json!({"crm": c, "account": a})).collect();
    // Every account's answers by status, summed per CRM (benches with thousands of accounts).
    let mut by_crm: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
    for ((crm, _), a) in &w.accounts {
        let sum = by_crm.entry(crm.as_str().to_string()).or_default();
        for (status, n) in a.counters.values().flatten() {
            *sum.entry(*status).or_default() += n;
        }
    }
    json(200, json!({"accounts": list, "answers": counters_json(&by_crm), "unattributed": counters_json(&w.unattributed)}))
}

async fn post_token(State(sim): State<SharedSim>, Path((crm, account)): AcctPath, Json(t): Json<NewToken>) -> Response {
    let crm = match parse_crm(&crm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = sim.clock.now_ms();
    let mut w = sim.lock();
    if w.account(crm, &account).is_none() {
        return missing(format!("no {} account {account:?}", crm.as_str()));
    }
    match issue_token(&mut w, crm, &account, t, now) {
        Ok(v) => json(201, v),
        Err(e) => bad(e),
    }
}

/// Every credential issued for an account (access and refresh tokens), so a test can look
/// for any of them where none may appear (logs, topics, the audit store).
async fn list_tokens(State(sim): State<SharedSim>, Path((crm, account)): AcctPath) -> Response {
    let crm = match parse_crm(&crm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let w = sim.lock();
    let access: Vec<&String> = w.tokens.iter().filter(|(_, t)| t.crm == crm && t.account == account).map(|(k, _)| k).collect();
    let refresh: Vec<&String> = w.refresh_tokens.iter().filter(|(_, t)| t.crm == crm && t.account == account).map(|(k, _)| k).collect();
    json(200, json!({"access_tokens": access, "refresh_tokens": refresh}))
}

/// expire | revoke, for an access token or a refresh token.
async fn token_action(State(sim): State<SharedSim>, Path((token, action)): Path<(String, String)>) -> Response {
    let now = sim.clock.now_ms();
    let mut w = sim.lock();
    let hit_access = match w.tokens.get_mut(&token) {
        Some(t) => {
            match action.as_str() {
                "expire" => t.expires_at_ms = Some(now - 1),
                "revoke" => t.revoked = true,
                _ => return bad("action is expire or revoke"),
            }
            true
        }
        None => false,
    };
    let hit_refresh = match w.refresh_tokens.get_mut(&token) {
        Some(r) if action == "revoke" || action == "expire" => {
            r.revoked = true;
            true
        }
        _ => false,
    };
    if hit_access || hit_refresh {
        StatusCode::NO_CONTENT.into_response()
    } else {
        missing(format!("no token {token:?}"))
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    deleted: Option<bool>,
}

async fn list_objects(
    State(sim): State<SharedSim>,
    Path((crm, account, object)): Path<(String, String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        let recs: Vec<Value> =
            a.table(&object).iter().filter(|r| q.deleted.is_none_or(|d| d == r.deleted_ms.is_some())).map(record_json).collect();
        json(200, json!({"records": recs}))
    })
}

async fn post_object(
    State(sim): State<SharedSim>,
    Path((crm, account, object)): Path<(String, String, String)>,
    Json(fields): Json<Map<String, Value>>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, now| {
        if !crms::objects(a.crm).contains(&object.as_str()) {
            return bad(format!("unknown object {object:?}: {:?}", crms::objects(a.crm)));
        }
        json(201, record_json(&insert_record(a, &object, fields, now)))
    })
}

async fn get_object(State(sim): State<SharedSim>, Path((crm, account, object, id)): Path<(String, String, String, String)>) -> Response {
    with_acct(&sim, &crm, &account, |a, _| match a.table(&object).get(&id) {
        Some(r) => json(200, record_json(r)),
        None => missing(format!("no {object} {id}")),
    })
}

/// An edit made by a person in the CRM's UI: fields replaced or removed (null), no limits.
async fn patch_object(
    State(sim): State<SharedSim>,
    Path((crm, account, object, id)): Path<(String, String, String, String)>,
    Json(fields): Json<Map<String, Value>>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, now| {
        let crm = a.crm;
        let Some(r) = a.table(&object).get_mut(&id) else { return missing(format!("no {object} {id}")) };
        r.apply(fields);
        r.updated_ms = now;
        r.indexed_at_ms = now;
        crms::derive(crm, &object, r);
        let out = record_json(r);
        a.table(&object).reindex(&id);
        json(200, out)
    })
}

/// An association a person makes in the CRM (HubSpot: a contact's primary company is type
/// 1, which HubSpot always pairs with the unlabeled 279; a contact's deal is type 4).
async fn post_link(
    State(sim): State<SharedSim>,
    Path((crm, account)): Path<(String, String)>,
    Json(link): Json<crate::state::Link>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        for (table, id) in [&link.from, &link.to] {
            if a.objects.get(table).and_then(|t| t.get(id)).is_none() {
                return missing(format!("no {table} {id}"));
            }
        }
        if a.crm == Crm::Hubspot && link.from.0 == "contacts" && link.to.0 == "companies" && link.type_id == 1 {
            // One primary company: a new one replaces the old.
            a.links.retain(|l| !(l.from == link.from && l.to.0 == "companies" && l.type_id == 1));
            a.links.insert(crate::state::Link { type_id: 279, ..link.clone() });
        }
        a.links.insert(link.clone());
        json(201, json!(link))
    })
}

async fn delete_link(
    State(sim): State<SharedSim>,
    Path((crm, account)): Path<(String, String)>,
    Json(link): Json<crate::state::Link>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        let before = a.links.len();
        a.links.retain(|l| !(l.from == link.from && l.to == link.to));
        json(200, json!({"removed": before - a.links.len()}))
    })
}

async fn list_links(State(sim): State<SharedSim>, Path((crm, account)): Path<(String, String)>) -> Response {
    with_acct(&sim, &crm, &account, |a, _| json(200, json!({"links": a.links})))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

/// A deletion made in the CRM: to the recycle bin / archive, or purged for good.
async fn delete_object(
    State(sim): State<SharedSim>,
    Path((crm, account, object, id)): Path<(String, String, String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, now| {
        let crm = a.crm;
        let t = a.table(&object);
        if q.purge {
            return if t.purge(&id) { StatusCode::NO_CONTENT.into_response() } else { missing(format!("no {object} {id}")) };
        }
        match t.get_mut(&id) {
            Some(r) => {
                r.deleted_ms.get_or_insert(now);
                // Derived fields (Salesforce's IsDeleted, Pipedrive's is_deleted) follow.
                crms::derive(crm, &object, r);
                StatusCode::NO_CONTENT.into_response()
            }
            None => missing(format!("no {object} {id}")),
        }
    })
}

#[derive(Deserialize)]
struct Merge {
    into: String,
}

/// Merges a contact into another, as a person does in the CRM: the loser is deleted and points
/// at the survivor, and its associations move over.
async fn merge_object(
    State(sim): State<SharedSim>,
    Path((crm, account, object, id)): Path<(String, String, String, String)>,
    Json(m): Json<Merge>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, now| {
        let crm = a.crm;
        let t = a.table(&object);
        if t.get(&m.into).is_none_or(|r| !r.live()) || m.into == id {
            return bad(format!("no live {object} {} to merge into", m.into));
        }
        let Some(loser) = t.get_mut(&id) else { return missing(format!("no {object} {id}")) };
        loser.deleted_ms = Some(now);
        loser.merged_into = Some(m.into.clone());
        crms::derive(crm, &object, loser);
        let moved = std::mem::take(&mut loser.associations);
        let survivor = t.get_mut(&m.into).unwrap();
        survivor.associations.extend(moved.iter().cloned());
        survivor.updated_ms = now;
        // Every record linked to the loser now points at the survivor (HubSpot lists the
        // links on both sides; the others only on the call: WhoId, Who_Id, person_id).
        for (name, table) in a.objects.iter_mut() {
            if name == &object {
                continue;
            }
            let linked: Vec<String> =
                table.iter().filter(|c| moved.contains(&c.id) || c.associations.contains(&id)).map(|c| c.id.clone()).collect();
            for cid in linked {
                if let Some(c) = table.get_mut(&cid) {
                    c.associations.remove(&id);
                    c.associations.insert(m.into.clone());
                    crms::derive(crm, name, c);
                }
            }
        }
        StatusCode::NO_CONTENT.into_response()
    })
}

async fn post_field(
    State(sim): State<SharedSim>,
    Path((crm, account, object, name)): Path<(String, String, String, String)>,
    Json(mut def): Json<FieldDef>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        if !crms::objects(a.crm).contains(&object.as_str()) {
            return bad(format!("unknown object {object:?}"));
        }
        def.custom = true;
        a.schema.entry(object.clone()).or_default().insert(name, def);
        a.ensure_indexes();
        json(201, json!(a.schema.get(&object)))
    })
}

/// Removes a field: the CRM forgets it, as when an admin deletes a custom field. Values in
/// existing records are dropped too.
async fn delete_field(
    State(sim): State<SharedSim>,
    Path((crm, account, object, name)): Path<(String, String, String, String)>,
) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        if a.schema.get_mut(&object).and_then(|f| f.remove(&name)).is_none() {
            return missing(format!("no field {object}.{name}"));
        }
        let ids: Vec<String> = a.table(&object).iter().map(|r| r.id.clone()).collect();
        for id in ids {
            a.table(&object).get_mut(&id).unwrap().fields.remove(&name);
        }
        StatusCode::NO_CONTENT.into_response()
    })
}

async fn permission(State(sim): State<SharedSim>, Path((crm, account, perm, action)): Path<(String, String, String, String)>) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        match action.as_str() {
            "revoke" => a.revoked.insert(perm),
            "grant" => a.revoked.remove(&perm),
            _ => return bad("action is revoke or grant"),
        };
        json(200, json!({"revoked": a.revoked}))
    })
}

async fn post_fault(State(sim): State<SharedSim>, Path((crm, account)): AcctPath, body: axum::body::Bytes) -> Response {
    let rule: FaultRule = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("bad fault: {e}")),
    };
    if !(0.0..=1.0).contains(&rule.rate) {
        return bad("rate must be within 0..=1");
    }
    with_acct(&sim, &crm, &account, |a, _| {
        a.faults.push(rule);
        json(201, json!({"faults": a.faults}))
    })
}

async fn clear_faults(State(sim): State<SharedSim>, Path((crm, account)): AcctPath) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        a.faults.clear();
        StatusCode::NO_CONTENT.into_response()
    })
}

async fn get_counters(State(sim): State<SharedSim>, Path((crm, account)): AcctPath) -> Response {
    with_acct(&sim, &crm, &account, |a, _| json(200, json!({"counters": counters_json(&a.counters), "keys": keys_json(a)})))
}

async fn reset_counters(State(sim): State<SharedSim>, Path((crm, account)): AcctPath) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        a.counters.clear();
        StatusCode::NO_CONTENT.into_response()
    })
}

async fn patch_limits(State(sim): State<SharedSim>, Path((crm, account)): AcctPath, Json(overrides): Json<Value>) -> Response {
    with_acct(&sim, &crm, &account, |a, _| {
        let current = serde_json::to_value(&a.limits).unwrap_or(Value::Null);
        let merged = match (current, &overrides) {
            (Value::Object(mut c), Value::Object(o)) => {
                for (k, v) in o {
                    if !c.contains_key(k) {
                        return bad(format!("unknown limit {k:?}"));
                    }
                    c.insert(k.clone(), v.clone());
                }
                Value::Object(c)
            }
            _ => return bad("limits must be an object"),
        };
        match crms::defaults(a.crm, &a.plan, 1, Some(&merged)) {
            Ok((l, _)) => {
                a.limits = l;
                json(200, json!({"limits": a.limits}))
            }
            Err(e) => bad(e),
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockReq {
    freeze: Option<bool>,
    at_ms: Option<i64>,
    advance_ms: Option<i64>,
}

async fn get_clock(State(sim): State<SharedSim>) -> Response {
    json(200, json!({"now_ms": sim.clock.now_ms(), "state": sim.clock.state()}))
}

async fn post_clock(State(sim): State<SharedSim>, Json(c): Json<ClockReq>) -> Response {
    match c.freeze {
        Some(true) => sim.clock.freeze(c.at_ms),
        Some(false) => sim.clock.unfreeze(),
        None => {}
    }
    if let Some(ms) = c.advance_ms {
        sim.clock.advance(ms);
    }
    json(200, json!({"now_ms": sim.clock.now_ms(), "state": sim.clock.state()}))
}

/// A fault on a CRM's OAuth token endpoint (same rule shape as an account's faults; kinds
/// `429` (the CRM's throttled-mint answer), `500`–`504`, `timeout`, `latency`).
async fn post_token_fault(State(sim): State<SharedSim>, Path(crm): Path<Crm>, body: axum::body::Bytes) -> Response {
    let rule: FaultRule = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("bad fault: {e}")),
    };
    let mut w = sim.lock();
    let rules = w.token_faults.entry(crm).or_default();
    rules.push(rule);
    json(201, json!({"faults": rules}))
}

/// The token endpoint's faults and its answers by status.
async fn get_token_faults(State(sim): State<SharedSim>, Path(crm): Path<Crm>) -> Response {
    let w = sim.lock();
    let answers: Map<String, Value> = w.token_answers.get(&crm).into_iter().flatten().map(|(s, n)| (s.to_string(), json!(n))).collect();
    json(200, json!({"faults": w.token_faults.get(&crm), "answers": answers}))
}

async fn clear_token_faults(State(sim): State<SharedSim>, Path(crm): Path<Crm>) -> Response {
    sim.lock().token_faults.remove(&crm);
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(sim): State<SharedSim>) -> Response {
    *sim.lock() = Default::default();
    StatusCode::NO_CONTENT.into_response()
}

async fn health() -> Response {
    json(200, json!({"status": "ok"}))
}

pub fn router(sim: SharedSim) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/reset", post(reset))
        .route("/clock", get(get_clock).post(post_clock))
        .route("/accounts", post(post_account).get(list_accounts))
        .route("/accounts/{crm}/{account}", get(get_account).delete(delete_account))
        .route("/accounts/{crm}/{account}/limits", patch(patch_limits))
        .route("/accounts/{crm}/{account}/tokens", post(post_token).get(list_tokens))
        .route("/tokens/{token}/{action}", post(token_action))
        .route("/accounts/{crm}/{account}/objects/{object}", get(list_objects).post(post_object))
        .route("/accounts/{crm}/{account}/objects/{object}/{id}", get(get_object).patch(patch_object).delete(delete_object))
        .route("/accounts/{crm}/{account}/objects/{object}/{id}/merge", post(merge_object))
        .route("/accounts/{crm}/{account}/links", get(list_links).post(post_link).delete(delete_link))
        .route("/accounts/{crm}/{account}/fields/{object}/{name}", post(post_field).delete(delete_field))
        .route("/accounts/{crm}/{account}/permissions/{perm}/{action}", post(permission))
        .route("/accounts/{crm}/{account}/faults", post(post_fault).delete(clear_faults))
        .route("/accounts/{crm}/{account}/counters", get(get_counters).delete(reset_counters))
        .route("/token-faults/{crm}", post(post_token_fault).get(get_token_faults).delete(clear_token_faults))
        .with_state(sim)
}

/// Seed file: `{"accounts": [<POST /admin/accounts body>, ...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub accounts: Vec<NewAccount>,
}
