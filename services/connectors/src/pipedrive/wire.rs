//! Pipedrive's answers as the connector reads them (CRM-APIS §4, API v2): the envelope
//! `{success, data, additional_data}`, activities, person search hits, errors `{success:false,
//! error, code?}`. Ids are numbers in v2 (strings in places in v1): read as either.

use crate::wire::{id, string_only, text};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The envelope of every answer.
#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    pub data: T,
    #[serde(default)]
    pub additional_data: AdditionalData,
}

/// `GET /api/v1/users/me`: the user the token is.
#[derive(Debug, Deserialize)]
pub struct Me {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub active_flag: bool,
    #[serde(default)]
    pub is_admin: bool,
}

fn yes() -> bool {
    true
}

/// A deal as `GET /api/v2/deals` lists it.
#[derive(Debug, Deserialize)]
pub struct Deal {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    #[serde(default)]
    pub update_time: Option<String>,
}

/// A company user from `GET /v1/users/find` (v2 has no users list or find).
#[derive(Debug, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub active_flag: bool,
    #[serde(default)]
    pub is_deleted: bool,
}

/// Listings: where the next page starts, if there is one.
#[derive(Debug, Default, Deserialize)]
pub struct AdditionalData {
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Something with an id (a created activity or person).
#[derive(Debug, Deserialize)]
pub struct Created {
    #[serde(deserialize_with = "id")]
    pub id: Option<String>,
}

/// An activity as listed: its id, person, and every other field.
#[derive(Debug, Deserialize)]
pub struct Activity {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "id")]
    pub person_id: Option<String>,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Activity {
    /// The person it is linked to (v1 used 0 for none).
    pub fn person(&self) -> Option<&str> {
        self.person_id.as_deref().filter(|p| *p != "0")
    }

    /// Every participant's person id (v2 `participants[].person_id`), primary first as
    /// listed.
    pub fn participants(&self) -> Vec<u64> {
        self.fields
            .get("participants")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(|p| p.get("person_id").and_then(Value::as_u64)).collect())
            .unwrap_or_default()
    }
}

/// `persons/search`: `data.items[].item`.
#[derive(Debug, Default, Deserialize)]
pub struct SearchHits {
    #[serde(default)]
    pub items: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
pub struct Hit {
    pub item: Person,
}

#[derive(Debug, Deserialize)]
pub struct Person {
    #[serde(default, deserialize_with = "id")]
    pub id: Option<String>,
    #[serde(default)]
    pub phones: Vec<Phone>,
    /// Addresses, as bare strings or `{value, label, primary}` like phones.
    #[serde(default)]
    pub emails: Vec<Phone>,
    /// Its organisation (`GET /api/v2/persons/{id}`; search answers an `organization`).
    #[serde(default, deserialize_with = "id")]
    pub org_id: Option<String>,
}

/// A phone as search gives it: a bare string, or `{value, label, primary}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Phone {
    Text(String),
    Entry {
        #[serde(default, deserialize_with = "text")]
        value: String,
    },
    Other(Value),
}

impl Phone {
    pub fn value(&self) -> Option<&str> {
        match self {
            Phone::Text(s) | Phone::Entry { value: s } => Some(s),
            Phone::Other(_) => None,
        }
    }
}

/// An error body.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default, deserialize_with = "text")]
    pub error: String,
    /// A named code where there is one (numeric codes repeat the status).
    #[serde(default, deserialize_with = "string_only")]
    pub code: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_pipedrive_sends_them() {
        let list: Envelope<Vec<Activity>> = serde_json::from_str(
            r#"{"success":true,"data":[{"id":7,"person_id":0,"note":"x"},{"id":"8","person_id":12}],"additional_data":{"next_cursor":"c2"}}"#,
        )
        .unwrap();
        assert_eq!((list.data[0].id.as_deref(), list.data[0].person(), list.data[1].person()), (Some("7"), None, Some("12")));
        assert_eq!(list.additional_data.next_cursor.as_deref(), Some("c2"));
        let hits: Envelope<SearchHits> = serde_json::from_str(
            r#"{"success":true,"data":{"items":[{"result_score":1.0,"item":{"id":3,"phones":["+1 415",{"value":"0171","primary":true}]}}]}}"#,
        )
        .unwrap();
        let phones: Vec<Option<&str>> = hits.data.items[0].item.phones.iter().map(Phone::value).collect();
        assert_eq!(phones, [Some("+1 415"), Some("0171")]);
        let created: Envelope<Created> = serde_json::from_str(r#"{"success":true,"data":{"id":42}}"#).unwrap();
        assert_eq!(created.data.id.as_deref(), Some("42"));
    }
}

/// A person as `GET /api/v2/persons` gives it, for a lead write: its addresses and numbers,
/// owner, custom fields (by code) and when it last changed.
#[derive(Debug, Deserialize)]
pub struct PersonRecord {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub emails: Vec<Phone>,
    #[serde(default)]
    pub phones: Vec<Phone>,
    #[serde(default, deserialize_with = "id")]
    pub owner_id: Option<String>,
    #[serde(default)]
    pub update_time: Option<String>,
    #[serde(default)]
    pub custom_fields: Map<String, Value>,
}

/// `GET /api/v2/personFields`: a field's code (a custom field's 40-character hash) and name.
#[derive(Debug, Deserialize)]
pub struct PersonField {
    pub field_code: String,
    pub field_name: String,
    #[serde(default)]
    pub is_custom_field: bool,
}
