//! What the four CRMs' wire types (`<crm>/wire.rs`) share: readers for the loose parts of
//! their answers. A CRM that adds a field breaks nothing (unknown fields are ignored); one that
//! sends a number where a string was (Pipedrive's ids), or an object where a message was,
//! is read rather than refused: those are the places answers vary between API versions.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A string, or any other JSON as its text (null and absent: empty).
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// A string; anything else (a number, null, absent) as empty.
pub fn string_only<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        _ => String::new(),
    })
}

/// An id sent as a number or as a string, as a string; null as None.
pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// The first string of an array (`["x"]`), or the string itself.
pub fn first_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Array(a) => a.into_iter().find_map(|v| v.as_str().map(str::to_string)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Loose {
        #[serde(default, deserialize_with = "text")]
        message: String,
        #[serde(default, deserialize_with = "id")]
        id: Option<String>,
        #[serde(default, deserialize_with = "first_text")]
        first: Option<String>,
    }

    #[test]
    fn loose_parts_are_read_not_refused() {
        let l: Loose = serde_json::from_str(r#"{"message": {"a": 1}, "id": 42, "first": ["k", "j"]}"#).unwrap();
        assert_eq!((l.message.as_str(), l.id.as_deref(), l.first.as_deref()), (r#"{"a":1}"#, Some("42"), Some("k")));
        let l: Loose = serde_json::from_str(r#"{"message": null, "id": "7", "first": "k"}"#).unwrap();
        assert_eq!((l.message.as_str(), l.id.as_deref(), l.first.as_deref()), ("", Some("7"), Some("k")));
        let l: Loose = serde_json::from_str("{}").unwrap();
        assert_eq!((l.message.as_str(), l.id, l.first), ("", None, None));
    }
}
