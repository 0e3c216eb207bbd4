//! What an app sets up in an org through the API (CRM-APIS-ACTIVITIES §6.2): custom fields
//! through the Tooling API, and field-level access through a permission set.
//!
//! - `POST /services/data/vXX.X/tooling/sobjects/CustomField`
//!   `{"FullName":"Activity.Key__c","Metadata":{"label","type":"Text","length","externalId","unique","caseSensitive"}}`
//!   makes the field (on Task and Event, for `Activity`). `DUPLICATE_DEVELOPER_NAME` when
//!   the object has a field of that name already.
//! - A field made so has no field-level security for anyone: it is not in describe, a query
//!   naming it fails and a write setting it fails, as for a field that does not exist
//!   (INVALID_FIELD), until a permission set grants it ([S] for non-admin profiles; the
//!   simulator hides it from every user, the harsher case). The grant is three records:
//!   `PermissionSet` `{Name, Label}`, `FieldPermissions` `{ParentId, SobjectType, Field,
//!   PermissionsRead, PermissionsEdit}` and `PermissionSetAssignment` `{AssigneeId,
//!   PermissionSetId}` for the API user (`GET /services/oauth2/userinfo` says who that is).
//!   A second grant or assignment of the same is `DUPLICATE_VALUE`.
//! - `SELECT Id FROM PermissionSet WHERE Name = '…'` finds a permission set by name.

use super::errors;
use crate::gate::json;
use crate::state::{Account, Caller, FieldDef, FieldType, SharedSim};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The objects this module answers for at `/sobjects/{object}`.
pub const SETUP_OBJECTS: [&str; 3] = ["PermissionSet", "FieldPermissions", "PermissionSetAssignment"];

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Setup {
    /// Fields made through the Tooling API that nobody has access to yet: object → name → field.
    pub hidden: BTreeMap<String, BTreeMap<String, FieldDef>>,
    /// Permission sets by id.
    pub permission_sets: BTreeMap<String, PermissionSet>,
    /// The org's lead assignment and duplicate rules (`super::leads`).
    pub lead_rules: super::leads::LeadRules,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PermissionSet {
    pub name: String,
    /// `Object.Field` → edit (read is implied by a grant).
    pub fields: BTreeMap<String, bool>,
    /// Users it is assigned to.
    pub assignees: Vec<String>,
}

impl Setup {
    /// Moves every hidden field a permission set assigned to `user` grants into the schema
    /// (read-only where it grants read alone).
    fn apply(acct: &mut Account) {
        let user = acct.owner_id.clone();
        let granted: BTreeMap<String, bool> = acct
            .sf_setup
            .permission_sets
            .values()
            .filter(|p| p.assignees.contains(&user))
            .flat_map(|p| p.fields.iter().map(|(f, e)| (f.clone(), *e)))
            .collect();
        for (object, fields) in acct.sf_setup.hidden.iter_mut() {
            let visible: Vec<String> = fields.keys().filter(|n| granted.contains_key(&format!("{object}.{n}"))).cloned().collect();
            for name in visible {
                let mut def = fields.remove(&name).expect("listed");
                def.read_only = !granted[&format!("{object}.{name}")];
                acct.schema.entry(object.clone()).or_default().insert(name, def);
            }
        }
    }
}

/// `GET /services/oauth2/userinfo`: who the token is (the org's API user).
pub async fn userinfo(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>) -> Response {
    sim.with(&caller, |acct, _| {
        json(
            200,
            json!({"user_id": acct.owner_id, "organization_id": "00D000000000001EAA", "preferred_username": format!("integration@{}.example", acct.id), "active": true}),
        )
    })
}

/// `POST /services/data/{v}/tooling/sobjects/CustomField`.
pub async fn create_custom_field(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = super::sobjects::check_version(&version) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return errors::error(400, "JSON_PARSER_ERROR", "Unexpected character in the body", &[]);
    };
    let full = body["FullName"].as_str().unwrap_or_default();
    let Some((object, name)) = full.split_once('.') else {
        return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", "FullName: must be Object.Field__c", &["FullName"]);
    };
    if !name.ends_with("__c") || name.len() <= 3 {
        return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", "The API name of a custom field must end in __c", &["FullName"]);
    }
    let objects: Vec<&str> = match object {
        "Activity" => vec!["Task", "Event"],
        o @ ("Contact" | "Lead") => vec![o],
        "Task" | "Event" => {
            // Task and Event fields are made on Activity.
            return errors::error(400, "INVALID_TYPE", &format!("Cannot create custom fields on {object}: create them on Activity"), &[]);
        }
        other => return errors::error(400, "INVALID_TYPE", &format!("sObject type '{other}' is not supported."), &[]),
    };
    let m = &body["Metadata"];
    let kind = match m["type"].as_str() {
        Some("Text") => FieldType::Text,
        Some("Number") => FieldType::Number,
        Some("Checkbox") => FieldType::Bool,
        other => return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", &format!("Metadata.type: unsupported {other:?}"), &["type"]),
    };
    let external_id = m["externalId"].as_bool().unwrap_or(false);
    if external_id && kind == FieldType::Bool {
        return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", "An External ID must be text, number or email", &["externalId"]);
    }
    if kind == FieldType::Text && !(1..=255).contains(&m["length"].as_u64().unwrap_or(0)) {
        return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", "Metadata.length: a Text field is 1 to 255 long", &["length"]);
    }
    sim.with(&caller, |acct, _| {
        let exists = |acct: &Account, o: &str| {
            acct.schema_of(o).keys().any(|k| k.eq_ignore_ascii_case(name))
                || acct.sf_setup.hidden.get(o).is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(name)))
        };
        if objects.iter().any(|o| exists(acct, o)) {
            return errors::error(
                400,
                "DUPLICATE_DEVELOPER_NAME",
                &format!("There is already a field named {} on {object}.", name.trim_end_matches("__c")),
                &[],
            );
        }
        let def = FieldDef { kind, unique: m["unique"].as_bool().unwrap_or(false), external_id, custom: true, ..Default::default() };
        for o in &objects {
            acct.sf_setup.hidden.entry(o.to_string()).or_default().insert(name.to_string(), def.clone());
        }
        let id = super::new_id(acct, "CustomField");
        json(201, json!({"id": id, "success": true, "errors": [], "warnings": [], "infos": []}))
    })
}

/// `POST /sobjects/PermissionSet|FieldPermissions|PermissionSetAssignment`.
pub fn create(acct: &mut Account, object: &str, body: &Map<String, Value>) -> Response {
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let missing = |k: &str| errors::error(400, "REQUIRED_FIELD_MISSING", &format!("Required fields are missing: [{k}]"), &[k]);
    let parent = |acct: &Account, k: &str| {
        let id = text(k);
        acct.sf_setup.permission_sets.keys().find(|p| super::normalise_id(&id).as_deref() == Some(p.as_str())).cloned()
    };
    match object {
        "PermissionSet" => {
            let name = text("Name");
            if name.is_empty() || text("Label").is_empty() {
                return missing(if name.is_empty() { "Name" } else { "Label" });
            }
            if let Some(id) = acct.sf_setup.permission_sets.iter().find(|(_, p)| p.name == name).map(|(id, _)| id.clone()) {
                return errors::error(
                    400,
                    "DUPLICATE_DEVELOPER_NAME",
                    &format!("duplicate value found: Name duplicates value on record with id: {id}"),
                    &["Name"],
                );
            }
            let id = super::new_id(acct, "PermissionSet");
            acct.sf_setup.permission_sets.insert(id.clone(), PermissionSet { name, ..Default::default() });
            json(201, json!({"id": id, "success": true, "errors": []}))
        }
        "FieldPermissions" => {
            let Some(set) = parent(acct, "ParentId") else { return missing("ParentId") };
            let (sobject, field) = (text("SobjectType"), text("Field"));
            let Some((o, name)) = field.split_once('.').filter(|(o, _)| *o == sobject) else {
                return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", "Field must be SobjectType.FieldName", &["Field"]);
            };
            let known = acct.schema_of(o).contains_key(name) || acct.sf_setup.hidden.get(o).is_some_and(|h| h.contains_key(name));
            if !known {
                return errors::error(
                    400,
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    &format!("Field: bad value for restricted picklist field: {field}"),
                    &["Field"],
                );
            }
            let (read, edit) = (body.get("PermissionsRead") == Some(&json!(true)), body.get("PermissionsEdit") == Some(&json!(true)));
            if !read {
                return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", "Edit access requires read access", &["PermissionsRead"]);
            }
            let set = acct.sf_setup.permission_sets.get_mut(&set).expect("found");
            if set.fields.contains_key(&field) {
                return errors::error(
                    400,
                    "DUPLICATE_VALUE",
                    "duplicate value found: <unknown> duplicates value on record with id: <unknown>",
                    &[],
                );
            }
            set.fields.insert(field, edit);
            Setup::apply(acct);
            let id = super::new_id(acct, "FieldPermissions");
            json(201, json!({"id": id, "success": true, "errors": []}))
        }
        _ => {
            let Some(set) = parent(acct, "PermissionSetId") else { return missing("PermissionSetId") };
            let user = text("AssigneeId");
            if super::normalise_id(&user) != super::normalise_id(&acct.owner_id) {
                return errors::error(400, "FIELD_INTEGRITY_EXCEPTION", "Assignee ID: id value of incorrect type", &["AssigneeId"]);
            }
            let set = acct.sf_setup.permission_sets.get_mut(&set).expect("found");
            if set.assignees.contains(&acct.owner_id) {
                return errors::error(
                    400,
                    "DUPLICATE_VALUE",
                    "duplicate value found: AssigneeId duplicates value on record with id: <unknown>",
                    &[],
                );
            }
            set.assignees.push(acct.owner_id.clone());
            Setup::apply(acct);
            let id = super::new_id(acct, "PermissionSetAssignment");
            json(201, json!({"id": id, "success": true, "errors": []}))
        }
    }
}

/// `SELECT Id FROM PermissionSet WHERE Name = '…'`, the one query on setup objects answered;
/// None for a query on another object.
pub fn query(acct: &Account, soql: &str) -> Option<Response> {
    let words: Vec<&str> = soql.split_whitespace().collect();
    let from = words.iter().position(|w| w.eq_ignore_ascii_case("FROM"))?;
    if !words.get(from + 1).is_some_and(|o| SETUP_OBJECTS.iter().any(|s| s.eq_ignore_ascii_case(o))) {
        return None;
    }
    let shape = soql.trim().split_once('\'').and_then(|(head, rest)| {
        let head: Vec<String> = head.split_whitespace().map(str::to_ascii_uppercase).collect();
        let wanted = ["SELECT", "ID", "FROM", "PERMISSIONSET", "WHERE", "NAME", "="];
        (head == wanted).then_some(())?;
        rest.strip_suffix('\'').filter(|n| !n.contains('\''))
    });
    let Some(name) = shape else {
        return Some(errors::error(
            400,
            "MALFORMED_QUERY",
            "only SELECT Id FROM PermissionSet WHERE Name = '…' is simulated on setup objects",
            &[],
        ));
    };
    let records: Vec<Value> = acct
        .sf_setup
        .permission_sets
        .iter()
        .filter(|(_, p)| p.name == name)
        .map(|(id, _)| json!({"attributes": {"type": "PermissionSet"}, "Id": id}))
        .collect();
    Some(json(200, json!({"totalSize": records.len(), "done": true, "records": records})))
}
