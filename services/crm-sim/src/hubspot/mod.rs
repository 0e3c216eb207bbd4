//! HubSpot CRM v3 (CRM-APIS §1): contacts, calls, emails and meetings objects, batch endpoints, search with
//! HubSpot's filter semantics, properties, v4 associations and the OAuth refresh flow.
//! Served under `/hubspot`, which stands in for `https://api.hubapi.com`.

pub mod errors;
pub mod limits;
mod oauth;
mod objects;
pub use objects::derive;
mod owners;
mod search;

use crate::faults::FaultKind;
use crate::gate::{self, AuthFailure, Class, CrmApi};
use crate::state::{Account, Caller, Crm, FieldDef, FieldType, Schema, SharedSim};
use axum::extract::Request;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::json;
use std::collections::BTreeMap;

pub struct HubSpot;

pub const CALL_STATUSES: &[&str] =
    &["BUSY", "CALLING_CRM_USER", "CANCELED", "COMPLETED", "CONNECTING", "FAILED", "IN_PROGRESS", "NO_ANSWER", "QUEUED", "RINGING"];
/// Call → contact association type (HUBSPOT_DEFINED).
pub const CALL_TO_CONTACT: i64 = 194;
pub const CONTACT_TO_CALL: i64 = 193;
/// Email → contact and meeting → contact (HUBSPOT_DEFINED; HubSpot's Node SDK
/// `AssociationTypes`, CRM-APIS-ACTIVITIES §1.1, §2.1).
pub const EMAIL_TO_CONTACT: i64 = 198;
pub const MEETING_TO_CONTACT: i64 = 200;
/// `hs_email_direction`: there is no INBOUND/OUTBOUND (the email guide's table).
pub const EMAIL_DIRECTIONS: &[&str] = &["EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL"];
pub const EMAIL_STATUSES: &[&str] = &["BOUNCED", "FAILED", "SCHEDULED", "SENDING", "SENT"];
pub const MEETING_OUTCOMES: &[&str] = &["SCHEDULED", "COMPLETED", "RESCHEDULED", "NO_SHOW", "CANCELED"];
/// A contact's lifecycle stages (internal values), in the only order HubSpot moves them by
/// default: forward (CRM-APIS-ACTIVITIES §5.1; `objects::lifecycle`).
pub const LIFECYCLE_STAGES: &[&str] =
    &["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer", "evangelist", "other"];

pub fn schema() -> Schema {
    use FieldType::*;
    let mut calls = BTreeMap::new();
    calls.insert("hs_timestamp".into(), FieldDef::required(DateTime));
    for f in [
        "hs_call_title",
        "hs_call_body",
        "hs_call_from_number",
        "hs_call_to_number",
        "hs_call_disposition",
        "hs_call_recording_url",
        "hubspot_owner_id",
        "hs_call_callee_object_id",
        "hs_call_source",
    ] {
        calls.insert(f.into(), FieldDef::of(Text));
    }
    calls.insert("hs_call_duration".into(), FieldDef::of(Number));
    calls.insert("hs_call_direction".into(), FieldDef::picklist(&["INBOUND", "OUTBOUND"]));
    calls.insert("hs_call_status".into(), FieldDef::picklist(CALL_STATUSES));
    for f in ["hs_object_id", "hs_createdate", "hs_lastmodifieddate"] {
        calls.insert(f.into(), FieldDef::read_only(Text));
    }
    let mut emails = BTreeMap::new();
    emails.insert("hs_timestamp".into(), FieldDef::required(DateTime));
    for f in ["hs_email_subject", "hs_email_text", "hs_email_html", "hubspot_owner_id", "hs_attachment_ids"] {
        emails.insert(f.into(), FieldDef::of(Text));
    }
    // A JSON-escaped string; HubSpot fills the read-only from/to properties from it.
    emails.insert("hs_email_headers".into(), FieldDef::of(Text));
    emails.insert("hs_email_direction".into(), FieldDef::picklist(EMAIL_DIRECTIONS));
    emails.insert("hs_email_status".into(), FieldDef::picklist(EMAIL_STATUSES));
    for f in [
        "hs_object_id",
        "hs_createdate",
        "hs_lastmodifieddate",
        "hs_email_from_email",
        "hs_email_from_firstname",
        "hs_email_from_lastname",
        "hs_email_to_email",
        "hs_email_to_firstname",
        "hs_email_to_lastname",
    ] {
        emails.insert(f.into(), FieldDef::read_only(Text));
    }
    let mut meetings = BTreeMap::new();
    // Required, but HubSpot fills it from hs_meeting_start_time when it is missing.
    meetings.insert("hs_timestamp".into(), FieldDef::required(DateTime));
    for f in [
        "hs_meeting_title",
        "hs_meeting_body",
        "hs_internal_meeting_notes",
        "hs_meeting_external_url",
        "hs_meeting_location",
        "hubspot_owner_id",
    ] {
        meetings.insert(f.into(), FieldDef::of(Text));
    }
    meetings.insert("hs_meeting_start_time".into(), FieldDef::of(DateTime));
    meetings.insert("hs_meeting_end_time".into(), FieldDef::of(DateTime));
    meetings.insert("hs_meeting_outcome".into(), FieldDef::picklist(MEETING_OUTCOMES));
    for f in ["hs_object_id", "hs_createdate", "hs_lastmodifieddate"] {
        meetings.insert(f.into(), FieldDef::read_only(Text));
    }
    let mut contacts = BTreeMap::new();
    for f in ["firstname", "lastname", "company", "jobtitle", "country", "hs_lead_status", "hubspot_owner_id"] {
        contacts.insert(f.into(), FieldDef::of(Text));
    }
    contacts.insert("email".into(), FieldDef { unique: true, ..FieldDef::of(Text) });
    contacts.insert("lifecyclestage".into(), FieldDef::picklist(LIFECYCLE_STAGES));
    contacts.insert("phone".into(), FieldDef::of(Phone));
    contacts.insert("mobilephone".into(), FieldDef::of(Phone));
    for f in [
        "hs_object_id",
        "createdate",
        "lastmodifieddate",
        "hs_searchable_calculated_phone_number",
        "hs_searchable_calculated_mobile_number",
    ] {
        contacts.insert(f.into(), FieldDef::read_only(Text));
    }
    let mut companies = BTreeMap::new();
    for f in ["name", "domain", "hubspot_owner_id"] {
        companies.insert(f.into(), FieldDef::of(Text));
    }
    let mut deals = BTreeMap::new();
    for f in ["dealname", "dealstage", "pipeline", "hubspot_owner_id"] {
        deals.insert(f.into(), FieldDef::of(Text));
    }
    deals.insert("amount".into(), FieldDef::of(Number));
    for f in ["hs_object_id", "hs_createdate", "hs_lastmodifieddate", "hs_is_closed"] {
        companies.insert(f.into(), FieldDef::read_only(Text));
        deals.insert(f.into(), FieldDef::read_only(Text));
    }
    Schema::from([
        ("calls".into(), calls),
        ("emails".into(), emails),
        ("meetings".into(), meetings),
        ("contacts".into(), contacts),
        ("companies".into(), companies),
        ("deals".into(), deals),
    ])
}

impl CrmApi for HubSpot {
    const CRM: Crm = Crm::Hubspot;

    fn credential(req: &Request) -> Option<String> {
        gate::auth_scheme(req, "Bearer")
    }

    fn auth_failure(f: AuthFailure) -> Response {
        match f {
            AuthFailure::Expired { expired_at_ms, now_ms } => errors::error(
                401,
                "EXPIRED_AUTHENTICATION",
                &format!("The OAuth token used to make this call expired {} second(s) ago.", (now_ms - expired_at_ms) / 1000),
                json!({"context": {"expire time": [crate::clock::iso_ms(expired_at_ms)]}}),
            ),
            AuthFailure::Missing | AuthFailure::Invalid => errors::error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                serde_json::Value::Null,
            ),
        }
    }

    fn class(method: &Method, route: &str, path: &str) -> Class {
        if route.ends_with("/search") {
            return Class::Search;
        }
        if route.contains("/properties/") {
            return if *method == Method::POST { Class::Create } else { Class::Meta };
        }
        if route.contains("/batch/") {
            return match path.rsplit('/').next() {
                Some("read") => Class::Read,
                Some("archive") => Class::Delete,
                Some("update") => Class::Update,
                _ => Class::Create,
            };
        }
        match *method {
            Method::GET if route.ends_with("{object}") => Class::List,
            _ => Class::of_method(method),
        }
    }

    fn permission(class: Class, route: &str, _path: &str) -> Option<&'static str> {
        if route.contains("/crm/v3/owners") {
            return Some("crm.objects.owners.read");
        }
        // Creating a property is a schema write: contacts' scope is the nearest HubSpot
        // documents (activity objects list none; see `create_property`).
        if route.contains("/crm/v3/properties/") && class == Class::Create {
            return Some("crm.schemas.contacts.write");
        }
        // The calls endpoints are gated on the contacts scopes (CRM-APIS §1.1).
        match class {
            Class::Read | Class::List | Class::Search | Class::Meta => Some("crm.objects.contacts.read"),
            _ => Some("crm.objects.contacts.write"),
        }
    }

    /// The emails object needs `sales-email-read` as well, to write and to read: the
    /// 2026-09 spec requires both scopes, where v3 listed them as alternatives; the harsher
    /// reading is modelled (CRM-APIS-ACTIVITIES §1.1).
    fn permissions(class: Class, route: &str, path: &str) -> Vec<&'static str> {
        let mut p: Vec<&'static str> = Self::permission(class, route, path).into_iter().collect();
        if path.contains("/objects/emails") || path.contains("/objects/0-49") {
            p.push("sales-email-read");
        }
        p
    }

    fn permission_denied(permission: &str) -> Response {
        errors::missing_scopes(permission)
    }

    fn admit(acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Result<(), Response> {
        limits::admit(acct, caller, class, now)
    }

    fn finish(acct: &mut Account, caller: &Caller, class: Class, _charge: u64, now: i64, headers: &mut HeaderMap) {
        limits::headers(acct, caller, class, now, headers)
    }

    fn fault(kind: FaultKind, _acct: &mut Account, _caller: &Caller, _class: Class, _now: i64) -> Response {
        match kind {
            FaultKind::Throttle => errors::throttled("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit."),
            FaultKind::Status500 => errors::error(500, "INTERNAL_ERROR", "internal error", serde_json::Value::Null),
            other => gate::gateway_error(other.status()),
        }
    }
}

pub fn router(sim: SharedSim) -> Router {
    let api = Router::new()
        .route("/crm/v3/objects/{object}", post(objects::create).get(objects::list))
        .route("/crm/v3/objects/{object}/search", post(search::search))
        .route("/crm/v3/objects/{object}/batch/{action}", post(objects::batch))
        .route("/crm/v3/objects/{object}/{id}", get(objects::read).patch(objects::update).delete(objects::archive))
        .route("/crm/v4/objects/{object}/{id}/associations/default/{to_object}/{to_id}", put(objects::associate))
        .route("/crm/v4/associations/{from}/{to}/batch/read", post(objects::associations_batch_read))
        .route("/crm/v3/owners", get(owners::list))
        .route("/crm/v3/owners/", get(owners::list))
        .route("/crm/v3/properties/{object}", get(objects::properties).post(objects::create_property))
        .route("/crm/v3/properties/{object}/groups", get(objects::property_groups).post(objects::create_property_group))
        .route("/crm/v3/properties/{object}/{name}", get(objects::property))
        .route_layer(axum::middleware::from_fn_with_state(sim.clone(), gate::gate::<HubSpot>));
    let oauth = Router::new()
        .route("/oauth/v1/token", post(oauth::token))
        .route("/oauth/v1/access-tokens/{token}", get(oauth::introspect))
        .route("/oauth/v2/private-apps/get/access-token-info", post(oauth::private_app_token_info));
    api.merge(oauth).with_state(sim)
}
