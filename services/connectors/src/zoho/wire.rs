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
    #[serde(default = "Option::default")]
    pub data: Option<Vec<T>>,
    #[serde(default)]
    pub info: Info,
}

impl<T> Data<T> {
    pub fn rows(self) -> Vec<T> {
        self.data.unwrap_or_default()
    }
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
}

/// A record's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(deserialize_with = "text")]
    pub id: String,
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

/// The module's fields (`/settings/fields`).
#[derive(Debug, Deserialize)]
pub struct Fields {
    #[serde(default)]
    pub fields: Vec<Field>,
}

#[derive(Debug, Deserialize)]
pub struct Field {
    pub api_name: String,
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
    }
}
