//! A plan's limits with a tenant's (or crm-sim admin's) overrides laid over them, field by
//! field, by name. One way for every CRM, in the writers and in crm-sim: the preset is
//! serialised, each override replaces the field of its name, and the result is read back, so
//! a misspelt or unknown limit is an error that names the known ones, never ignored.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

/// `preset` with `overrides` applied. `inputs`: names that shaped the preset itself (seats,
/// users, licenses), accepted and skipped here.
pub fn with_overrides<T: Serialize + DeserializeOwned>(preset: T, overrides: &Map<String, Value>, inputs: &[&str]) -> Result<T, String> {
    let mut v = serde_json::to_value(preset).map_err(|e| e.to_string())?;
    let base = v.as_object_mut().ok_or("limits serialize to objects")?;
    for (k, val) in overrides {
        if inputs.contains(&k.as_str()) {
            continue;
        }
        if !base.contains_key(k) {
            let known: Vec<&str> = inputs.iter().copied().chain(base.keys().map(String::as_str)).collect();
            return Err(format!("unknown limit '{k}' (known: {})", known.join(", ")));
        }
        base.insert(k.clone(), val.clone());
    }
    serde_json::from_value(v).map_err(|e| format!("limits: {e}"))
}

/// Overrides kept as numbers (the tenants file), as the map [`with_overrides`] takes.
pub fn numbers<'a>(limits: impl IntoIterator<Item = (&'a String, &'a u64)>) -> Map<String, Value> {
    limits.into_iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plan {
        burst: u64,
        daily: u64,
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn overrides_replace_by_name_and_unknown_names_fail() {
        let p = with_overrides(Plan { burst: 10, daily: 100 }, &map(json!({"daily": 5, "seats": 3})), &["seats"]).unwrap();
        assert_eq!(p, Plan { burst: 10, daily: 5 });
        let e = with_overrides(Plan { burst: 10, daily: 100 }, &map(json!({"per_minute": 1})), &["seats"]).unwrap_err();
        assert!(e.contains("per_minute") && e.contains("seats, burst, daily"), "{e}");
        assert!(with_overrides(Plan { burst: 10, daily: 100 }, &map(json!({"daily": "lots"})), &[]).is_err());
    }
}
