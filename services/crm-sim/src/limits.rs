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

/// Each CRM's module reads its own shape through these: an account holds its CRM's limits
/// from creation on (admin.rs builds both from the same `Crm`), so another shape here is a
/// bug in the simulator, not in a client.
impl Limits {
    pub fn hubspot(&self) -> &crate::hubspot::limits::Limits {
        match self {
            Limits::Hubspot(l) => l,
            other => panic!("a HubSpot account holds HubSpot limits, not {other:?}"),
        }
    }

    pub fn salesforce(&self) -> &crate::salesforce::limits::Limits {
        match self {
            Limits::Salesforce(l) => l,
            other => panic!("a Salesforce account holds Salesforce limits, not {other:?}"),
        }
    }

    pub fn zoho(&self) -> &crate::zoho::limits::Limits {
        match self {
            Limits::Zoho(l) => l,
            other => panic!("a Zoho account holds Zoho limits, not {other:?}"),
        }
    }

    pub fn pipedrive(&self) -> &crate::pipedrive::limits::Limits {
        match self {
            Limits::Pipedrive(l) => l,
            other => panic!("a Pipedrive account holds Pipedrive limits, not {other:?}"),
        }
    }
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

/// A plan's preset with the admin's overrides laid over it (crm-sync's one way of doing so);
/// unknown keys are an error.
pub fn with_overrides<T: Serialize + DeserializeOwned>(preset: T, overrides: Option<&Value>) -> Result<T, String> {
    match overrides {
        None | Some(Value::Null) => Ok(preset),
        Some(Value::Object(o)) => crm_common::overrides::with_overrides(preset, o, &[]),
        Some(_) => Err("limits must be an object".into()),
    }
}
