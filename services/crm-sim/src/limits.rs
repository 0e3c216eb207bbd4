//! Per-account limits (one shape per CRM, from its plan, overridable field by field through the
//! admin API) and the usage counters they are checked against.

use crate::window::{Daily, Rolling};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Limits {
    Hubspot(crate::hubspot::limits::Limits),
    Salesforce(crate::salesforce::limits::Limits),
    Zoho(crate::zoho::limits::Limits),
    Pipedrive(crate::pipedrive::limits::Limits),
}

/// Counters; each CRM uses the ones its limits are made of.
#[derive(Debug)]
pub struct Usage {
    /// Short windows by scope (HubSpot app, Pipedrive token).
    pub burst: HashMap<String, Rolling>,
    /// Search endpoints' own windows by scope.
    pub search: HashMap<String, Rolling>,
    /// Calendar-day budget (HubSpot daily calls, Pipedrive daily tokens).
    pub daily: Daily,
    /// Rolling 24 hours (Salesforce API requests, Zoho credits).
    pub day_rolling: Rolling,
    /// Rolling minute (Zoho's pace).
    pub minute: Rolling,
    /// Per-user POST/PUT/PATCH today (Pipedrive's x-daily-requests-left).
    pub writes_today: HashMap<String, Daily>,
}

impl Usage {
    pub fn new(tz_offset_min: i32) -> Usage {
        Usage {
            burst: HashMap::new(),
            search: HashMap::new(),
            daily: Daily::new(tz_offset_min),
            day_rolling: Rolling::new(crate::clock::DAY_MS),
            minute: Rolling::new(60_000),
            writes_today: HashMap::new(),
        }
    }

    pub fn burst(&mut self, scope: &str, window_ms: i64) -> &mut Rolling {
        self.burst.entry(scope.to_string()).or_insert_with(|| Rolling::new(window_ms))
    }

    pub fn search(&mut self, scope: &str, window_ms: i64) -> &mut Rolling {
        self.search.entry(scope.to_string()).or_insert_with(|| Rolling::new(window_ms))
    }
}

/// A plan's preset with the admin's overrides laid over it; unknown keys are an error.
pub fn with_overrides<T: Serialize + DeserializeOwned>(preset: T, overrides: Option<&Value>) -> Result<T, String> {
    let Some(Value::Object(o)) = overrides else {
        return match overrides {
            None | Some(Value::Null) => Ok(preset),
            Some(_) => Err("limits must be an object".into()),
        };
    };
    let mut v = serde_json::to_value(preset).map_err(|e| e.to_string())?;
    let base = v.as_object_mut().expect("limits serialize to objects");
    for (k, val) in o {
        if !base.contains_key(k) {
            return Err(format!("unknown limit {k:?}; known: {}", base.keys().cloned().collect::<Vec<_>>().join(", ")));
        }
        base.insert(k.clone(), val.clone());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}
