//! Zoho CRM's answers as the connector reads them (CRM-APIS §3): `data` arrays (of records,
//! or of per-record results of a multi-record write), errors `{code, details, message,
//! status}`, COQL rows, the module's field list.

use crate::wire::{id, text};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most answers: a `data` array, and `info` where there are pages. A 204 (nothing found)
/// has no body and reads as no data.
#[derive(Debug, Deserialize)]
pub struct Data<T> {
    /// `Emails` in `associate_email`'s answer.
    #[serde(default = "Option::default", alias = "Emails")]
    pub data: Option<Vec<T>>,
    #[serde(default)]
    pub info: Info,
}

impl<T> Data<T> {
    pub fn rows(self) -> Vec<T> {
        self.data.unwrap_or_default()
    }
}

/// `GET /users?type=ActiveUsers`: a page of the org's users (no email filter exists).
#[derive(Debug, Deserialize)]
pub struct Users {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub info: Info,
}

#[derive(Debug, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    /// `active` for an active user.
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Info {
    #[serde(default)]
    pub more_records: bool,
}

/// A record's result in a multi-record answer, or an error of the whole call.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// `success` or `error`.
    #[serde(default, deserialize_with = "text")]
    pub status: String,
    #[serde(default, deserialize_with = "text")]
    pub code: String,
    #[serde(default, deserialize_with = "text")]
    pub message: String,
    #[serde(default)]
    pub details: Details,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.status == "success"
    }

    /// The field an error names (`api_name`, or COQL's `column_name`); empty if none.
    pub fn field(&self) -> &str {
        self.details.api_name.as_deref().or(self.details.column_name.as_deref()).unwrap_or("")
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Details {
    /// The record written (success), or the one an error concerns.
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    #[serde(default)]
    pub api_name: Option<String>,
    #[serde(default)]
    pub column_name: Option<String>,
    /// DUPLICATE_DATA on a unique field: the record that holds the value.
    #[serde(default)]
    pub duplicate_record: Option<Record>,
    /// `associate_email`: the email's id in Zoho.
    #[serde(default, deserialize_with = "id")]
    pub message_id: Option<String>,
}

/// A record's id (and, in a duplicate's answer, its module).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<Module>,
}

/// A module named in an answer (`{"api_name": "Leads", "id": …}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Module {
    #[serde(default)]
    pub api_name: String,
}

/// A record as COQL, search and the recycle bin return it: its id and the fields asked for.
#[derive(Debug, Deserialize)]
pub struct Row {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    /// The contact a call hangs under (`{id, name}`, or the id alone).
    #[serde(default, rename = "Who_Id")]
    pub who: Option<Lookup>,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Row {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Lookup {
    Record(Record),
    Id(String),
    Other(Value),
}

impl Lookup {
    pub fn id(&self) -> Option<&str> {
        match self {
            Lookup::Record(r) => Some(&r.id),
            Lookup::Id(s) => Some(s),
            Lookup::Other(_) => None,
        }
    }
}

/// An event as `GET /Events/{id}` returns it: who takes part, its Who_Id, whether Zoho
/// shows it cancelled.
#[derive(Debug, Deserialize)]
pub struct Event {
    #[serde(default, rename = "Participants")]
    pub participants: Option<Vec<Participant>>,
    #[serde(default, rename = "Who_Id")]
    pub who: Option<Lookup>,
    #[serde(default, rename = "$event_cancelled")]
    pub cancelled: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Participant {
    #[serde(default, deserialize_with = "text", rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "text")]
    pub participant: String,
}

impl Event {
    /// The contacts taking part.
    pub fn contact_participants(&self) -> Vec<String> {
        self.participants.iter().flatten().filter(|p| p.kind == "contact").map(|p| p.participant.clone()).collect()
    }

    /// Every participant as a write names them (`{type, participant}`), to send back with
    /// the new ones: setting Participants replaces the list.
    pub fn participants_as_sent(&self) -> Vec<Value> {
        self.participants
            .iter()
            .flatten()
            .filter(|p| !p.kind.is_empty() && !p.participant.is_empty())
            .map(|p| serde_json::json!({"type": p.kind, "participant": p.participant}))
            .collect()
    }
}

/// `GET /actions/email_available`: whether an email with a Message-ID is associated, and
/// the record it hangs on.
#[derive(Debug, Deserialize)]
pub struct Availability {
    #[serde(default)]
    pub available: bool,
    #[serde(default)]
    pub record: Option<AvailableAt>,
}

#[derive(Debug, Deserialize)]
pub struct AvailableAt {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
}

/// The module's fields (`/settings/fields`).
#[derive(Debug, Deserialize)]
pub struct Fields {
    #[serde(default)]
    pub fields: Vec<Field>,
}

#[derive(Debug, Deserialize)]
pub struct Field {
    pub api_name: String,
    /// "Do not allow duplicate values": an object when set, null when not.
    #[serde(default)]
    pub unique: Option<serde_json::Value>,
}

/// The answer to a fields create: one status per field asked for.
#[derive(Debug, Deserialize)]
pub struct FieldsCreated {
    #[serde(default)]
    pub fields: Vec<FieldCreated>,
}

#[derive(Debug, Deserialize)]
pub struct FieldCreated {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_zoho_sends_them() {
        let multi: Data<Outcome> = serde_json::from_str(
            r#"{"data":[{"code":"SUCCESS","details":{"id":"5843000000123","Created_Time":"2026-01-01T00:00:00+00:00"},"message":"record added","status":"success"},
                        {"code":"DUPLICATE_DATA","details":{"api_name":"Crm_Sync_Key","duplicate_record":{"id":"58430000009","module":{"api_name":"Calls"}}},"message":"duplicate data","status":"error"}]}"#,
        )
        .unwrap();
        let rows = multi.rows();
        assert!(rows[0].succeeded() && rows[0].details.id.as_deref() == Some("5843000000123"));
        assert_eq!(
            (rows[1].field(), rows[1].details.duplicate_record.as_ref().map(|r| r.id.as_str())),
            ("Crm_Sync_Key", Some("58430000009"))
        );
        let none: Data<Row> = serde_json::from_str("{}").unwrap();
        assert!(none.data.is_none());
        let coql: Data<Row> = serde_json::from_str(
            r#"{"data":[{"id":"1","Crm_Sync_Key":"k","Who_Id":{"id":"9","name":"x"}},{"id":"2","Who_Id":null}],"info":{"more_records":true}}"#,
        )
        .unwrap();
        assert!(coql.info.more_records);
        let rows = coql.rows();
        assert_eq!((rows[0].field("Crm_Sync_Key"), rows[0].who.as_ref().and_then(Lookup::id)), (Some("k"), Some("9")));
        assert!(rows[1].who.is_none());
        let associated: Data<Outcome> = serde_json::from_str(
            r#"{"Emails":[{"code":"SUCCESS","details":{"message_id":"2b1c3e"},"message":"Email associated successfully","status":"success"}]}"#,
        )
        .unwrap();
        assert_eq!(associated.rows()[0].details.message_id.as_deref(), Some("2b1c3e"));
        let event: Data<Event> = serde_json::from_str(
            r#"{"data":[{"id":"7","Participants":[{"type":"contact","participant":"9","name":"Jane","invited":false,"status":"not_known"},{"type":"email","participant":"x@y.example"}],"Who_Id":{"id":"9","name":"Jane"},"$event_cancelled":true}]}"#,
        )
        .unwrap();
        let e = &event.rows()[0];
        assert_eq!(e.contact_participants(), ["9"]);
        assert_eq!(e.participants_as_sent().len(), 2);
        assert!(e.cancelled && e.who.is_some());
        let a: Availability =
            serde_json::from_str(r#"{"available":true,"record":{"module":{"api_name":"Contacts","id":"1"},"id":"9"}}"#).unwrap();
        assert!(a.available && a.record.and_then(|r| r.id).as_deref() == Some("9"));
    }
}

/// `GET /settings/automation/assignment_rules?module=Leads`: the org's lead assignment rules
/// (a 204, none, reads as an empty list).
#[derive(Debug, Default, Deserialize)]
pub struct AssignmentRules {
    #[serde(default)]
    pub assignment_rules: Vec<AssignmentRule>,
}

#[derive(Debug, Deserialize)]
pub struct AssignmentRule {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(default)]
    pub name: String,
}
