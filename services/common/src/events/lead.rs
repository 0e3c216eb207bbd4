//! Leads: people a lead source captured (`schemas/lead_event.avsc`,
//! `schemas/normalised_lead.avsc`). Not activities: each creates or updates a person in a
//! CRM. They travel the activities' pipeline under [`super::ActivityKind::Lead`].

use super::AvroRecord;
use crate::schemas::RecordType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What kind of source captured a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LeadSourceType {
    Unknown,
    Form,
    AdPlatform,
    Webinar,
    Event,
    Import,
    Other,
}

/// What the person said to having their data processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentState {
    /// A state this build does not know (a reader's fallback): never written.
    Unknown,
    NotAsked,
    Granted,
    Denied,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadAttribution {
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub campaign_id: Option<String>,
    pub ad_id: Option<String>,
    pub form_id: Option<String>,
    pub page_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadEvent {
    pub tenant_id: String,
    pub lead_id: String,
    pub source: String,
    pub source_type: LeadSourceType,
    pub version: i64,
    pub submitted_at: i64,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
    pub company: Option<String>,
    pub job_title: Option<String>,
    pub country: Option<String>,
    pub consent_to_processing: ConsentState,
    pub consent: HashMap<String, String>,
    pub attribution: LeadAttribution,
    pub answers: HashMap<String, String>,
    pub attributes: HashMap<String, String>,
}

impl AvroRecord for LeadEvent {
    const RECORD: RecordType = RecordType::LeadEvent;
}

/// A value the normaliser left out of a lead, and why (never the value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedField {
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalisedLead {
    pub tenant_id: String,
    pub lead_id: String,
    pub source: String,
    pub source_type: LeadSourceType,
    pub version: i64,
    pub submitted_at: i64,
    pub email: Option<String>,
    pub phone_e164: Option<String>,
    pub phone_region: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
    pub company: Option<String>,
    pub job_title: Option<String>,
    pub country: Option<String>,
    pub consent_to_processing: ConsentState,
    pub consent: HashMap<String, String>,
    pub attribution: LeadAttribution,
    pub answers: HashMap<String, String>,
    pub attributes: HashMap<String, String>,
    pub dropped_fields: Vec<DroppedField>,
    pub normalised_at: i64,
}

impl AvroRecord for NormalisedLead {
    const RECORD: RecordType = RecordType::NormalisedLead;
}
