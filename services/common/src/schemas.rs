//! The .avsc files under `schemas/`, compiled in, with every version the repo has shipped.
//!
//! `schemas/<record>.avsc` is what this build writes; `schemas/history/<record>/vN.avsc`
//! are the versions earlier releases wrote and that may still sit in topics (or the DLQ,
//! for months). A reader must accept all of them, so each one's fingerprint maps to its
//! schema here. Releasing a schema change means copying the new .avsc into history.

use crate::fingerprint::{fingerprint, parsing_canonical_form};
use apache_avro::Schema;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The record types crm-sync puts on Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    CallEvent,
    EmailEvent,
    MeetingEvent,
    LeadEvent,
    NormalisedCall,
    NormalisedEmail,
    NormalisedMeeting,
    NormalisedLead,
    CrmWriteRequest,
    ActivityWriteRequest,
    AuditRecord,
    DeadLetter,
}

impl RecordType {
    pub const ALL: [RecordType; 12] = [
        RecordType::CallEvent,
        RecordType::EmailEvent,
        RecordType::MeetingEvent,
        RecordType::LeadEvent,
        RecordType::NormalisedCall,
        RecordType::NormalisedEmail,
        RecordType::NormalisedMeeting,
        RecordType::NormalisedLead,
        RecordType::CrmWriteRequest,
        RecordType::ActivityWriteRequest,
        RecordType::AuditRecord,
        RecordType::DeadLetter,
    ];

    pub fn file_stem(self) -> &'static str {
        match self {
            RecordType::CallEvent => "call_event",
            RecordType::EmailEvent => "email_event",
            RecordType::MeetingEvent => "meeting_event",
            RecordType::LeadEvent => "lead_event",
            RecordType::NormalisedCall => "normalised_call",
            RecordType::NormalisedEmail => "normalised_email",
            RecordType::NormalisedMeeting => "normalised_meeting",
            RecordType::NormalisedLead => "normalised_lead",
            RecordType::CrmWriteRequest => "crm_write_request",
            RecordType::ActivityWriteRequest => "activity_write_request",
            RecordType::AuditRecord => "audit_record",
            RecordType::DeadLetter => "dead_letter",
        }
    }

    fn current_text(self) -> &'static str {
        match self {
            RecordType::CallEvent => include_str!("../../../schemas/call_event.avsc"),
            RecordType::EmailEvent => include_str!("../../../schemas/email_event.avsc"),
            RecordType::MeetingEvent => include_str!("../../../schemas/meeting_event.avsc"),
            RecordType::LeadEvent => include_str!("../../../schemas/lead_event.avsc"),
            RecordType::NormalisedCall => include_str!("../../../schemas/normalised_call.avsc"),
            RecordType::NormalisedEmail => include_str!("../../../schemas/normalised_email.avsc"),
            RecordType::NormalisedMeeting => include_str!("../../../schemas/normalised_meeting.avsc"),
            RecordType::NormalisedLead => include_str!("../../../schemas/normalised_lead.avsc"),
            RecordType::CrmWriteRequest => include_str!("../../../schemas/crm_write_request.avsc"),
            RecordType::ActivityWriteRequest => include_str!("../../../schemas/activity_write_request.avsc"),
            RecordType::AuditRecord => include_str!("../../../schemas/audit_record.avsc"),
            RecordType::DeadLetter => include_str!("../../../schemas/dead_letter.avsc"),
        }
    }
}

/// Every shipped version: (record type, path under schemas/, text). A test checks that this
/// list and the files in schemas/history agree.
pub const HISTORY: &[(RecordType, &str, &str)] = &[
    (RecordType::CallEvent, "history/call_event/v1.avsc", include_str!("../../../schemas/history/call_event/v1.avsc")),
    (RecordType::NormalisedCall, "history/normalised_call/v1.avsc", include_str!("../../../schemas/history/normalised_call/v1.avsc")),
    (RecordType::CrmWriteRequest, "history/crm_write_request/v1.avsc", include_str!("../../../schemas/history/crm_write_request/v1.avsc")),
    (RecordType::AuditRecord, "history/audit_record/v1.avsc", include_str!("../../../schemas/history/audit_record/v1.avsc")),
    (RecordType::DeadLetter, "history/dead_letter/v1.avsc", include_str!("../../../schemas/history/dead_letter/v1.avsc")),
    // Emails and meetings; audit and DLQ records name the activity's kind.
    (RecordType::EmailEvent, "history/email_event/v1.avsc", include_str!("../../../schemas/history/email_event/v1.avsc")),
    (RecordType::MeetingEvent, "history/meeting_event/v1.avsc", include_str!("../../../schemas/history/meeting_event/v1.avsc")),
    (RecordType::NormalisedEmail, "history/normalised_email/v1.avsc", include_str!("../../../schemas/history/normalised_email/v1.avsc")),
    (
        RecordType::NormalisedMeeting,
        "history/normalised_meeting/v1.avsc",
        include_str!("../../../schemas/history/normalised_meeting/v1.avsc"),
    ),
    (
        RecordType::ActivityWriteRequest,
        "history/activity_write_request/v1.avsc",
        include_str!("../../../schemas/history/activity_write_request/v1.avsc"),
    ),
    (RecordType::AuditRecord, "history/audit_record/v2.avsc", include_str!("../../../schemas/history/audit_record/v2.avsc")),
    (RecordType::DeadLetter, "history/dead_letter/v2.avsc", include_str!("../../../schemas/history/dead_letter/v2.avsc")),
    (RecordType::DeadLetter, "history/dead_letter/v3.avsc", include_str!("../../../schemas/history/dead_letter/v3.avsc")),
    // Leads; audit and DLQ records name the LEAD kind.
    (RecordType::LeadEvent, "history/lead_event/v1.avsc", include_str!("../../../schemas/history/lead_event/v1.avsc")),
    (RecordType::NormalisedLead, "history/normalised_lead/v1.avsc", include_str!("../../../schemas/history/normalised_lead/v1.avsc")),
    (RecordType::AuditRecord, "history/audit_record/v3.avsc", include_str!("../../../schemas/history/audit_record/v3.avsc")),
    (RecordType::DeadLetter, "history/dead_letter/v4.avsc", include_str!("../../../schemas/history/dead_letter/v4.avsc")),
    (
        RecordType::ActivityWriteRequest,
        "history/activity_write_request/v2.avsc",
        include_str!("../../../schemas/history/activity_write_request/v2.avsc"),
    ),
];

/// A parsed schema with its canonical form and fingerprint.
#[derive(Clone)]
pub struct Versioned {
    pub record: RecordType,
    pub path: String,
    pub schema: Schema,
    pub canonical: String,
    pub fingerprint: [u8; 8],
}

impl Versioned {
    pub fn parse(record: RecordType, path: &str, text: &str) -> anyhow::Result<Versioned> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{path}: not JSON: {e}"))?;
        let canonical = parsing_canonical_form(&json)?;
        let schema = Schema::parse(&json).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        Ok(Versioned { record, path: path.to_string(), fingerprint: fingerprint(&canonical), canonical, schema })
    }
}

pub struct Registry {
    current: HashMap<RecordType, Versioned>,
    by_fingerprint: HashMap<[u8; 8], Versioned>,
}

impl Registry {
    /// The compiled-in schemas. They are checked by tests, so failing here is a build bug.
    pub fn global() -> &'static Registry {
        static REG: OnceLock<Registry> = OnceLock::new();
        REG.get_or_init(|| Registry::build().expect("compiled-in schemas are valid"))
    }

    fn build() -> anyhow::Result<Registry> {
        let mut current = HashMap::new();
        let mut by_fingerprint = HashMap::new();
        for rt in RecordType::ALL {
            let path = format!("{}.avsc", rt.file_stem());
            let v = Versioned::parse(rt, &path, rt.current_text())?;
            by_fingerprint.insert(v.fingerprint, v.clone());
            current.insert(rt, v);
        }
        for (rt, path, text) in HISTORY {
            let v = Versioned::parse(*rt, path, text)?;
            // The current schema usually equals the latest shipped one; keep the first.
            by_fingerprint.entry(v.fingerprint).or_insert(v);
        }
        Ok(Registry { current, by_fingerprint })
    }

    pub fn current(&self, rt: RecordType) -> &Versioned {
        &self.current[&rt]
    }

    pub fn by_fingerprint(&self, fp: &[u8; 8]) -> Option<&Versioned> {
        self.by_fingerprint.get(fp)
    }

    pub fn versions(&self) -> impl Iterator<Item = &Versioned> {
        self.by_fingerprint.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema_compatibility::SchemaCompatibility;

    fn schemas_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    #[test]
    fn every_history_file_is_registered() {
        let mut on_disk = vec![];
        for entry in std::fs::read_dir(schemas_dir().join("history")).unwrap() {
            let dir = entry.unwrap().path();
            for f in std::fs::read_dir(&dir).unwrap() {
                let f = f.unwrap().path();
                let rel = f.strip_prefix(schemas_dir()).unwrap().to_string_lossy().to_string();
                on_disk.push(rel);
            }
        }
        on_disk.sort();
        let mut registered: Vec<String> = HISTORY.iter().map(|(_, p, _)| p.to_string()).collect();
        registered.sort();
        assert_eq!(on_disk, registered, "schemas/history and schemas::HISTORY disagree");
        for (rt, path, _) in HISTORY {
            assert!(path.starts_with(&format!("history/{}/", rt.file_stem())), "{path} filed under the wrong record");
        }
    }

    /// The CI gate DESIGN §2 asks for: the current schema reads every shipped version
    /// (backward) and every shipped reader reads what we write now (forward).
    #[test]
    fn current_schemas_stay_compatible_with_every_release() {
        let reg = Registry::global();
        for (rt, path, text) in HISTORY {
            let old = Versioned::parse(*rt, path, text).unwrap();
            let cur = &reg.current(*rt).schema;
            SchemaCompatibility::can_read(&old.schema, cur)
                .unwrap_or_else(|e| panic!("{}: current cannot read {path}: {e}", rt.file_stem()));
            SchemaCompatibility::can_read(cur, &old.schema)
                .unwrap_or_else(|e| panic!("{}: {path} cannot read current: {e}", rt.file_stem()));
        }
    }

    #[test]
    fn current_schema_is_shipped_or_newer_than_history() {
        // Each record has at least one shipped version.
        for rt in RecordType::ALL {
            assert!(HISTORY.iter().any(|(r, _, _)| *r == rt), "{rt:?} has no shipped version");
        }
    }

    /// CrmWriteRequest embeds NormalisedCall; the copy must not drift from the original.
    #[test]
    fn embedded_normalised_call_matches_its_own_schema() {
        let cwr: serde_json::Value = serde_json::from_str(RecordType::CrmWriteRequest.current_text()).unwrap();
        let call = cwr["fields"].as_array().unwrap().iter().find(|f| f["name"] == "call").unwrap();
        let mut embedded = call["type"].clone();
        embedded["namespace"] = "io.crmsync.events".into();
        let own: serde_json::Value = serde_json::from_str(RecordType::NormalisedCall.current_text()).unwrap();
        assert_eq!(parsing_canonical_form(&embedded).unwrap(), parsing_canonical_form(&own).unwrap());
    }

    /// ActivityWriteRequest embeds NormalisedEmail, NormalisedMeeting and NormalisedLead; no copy may
    /// drift from its own schema. In one schema a named type is defined once, so the
    /// meeting's copy names `EmailAddress` where its own schema defines it.
    #[test]
    fn embedded_email_and_meeting_match_their_own_schemas() {
        let awr: serde_json::Value = serde_json::from_str(RecordType::ActivityWriteRequest.current_text()).unwrap();
        let embedded = |name: &str| {
            let f = awr["fields"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap();
            let mut t = f["type"][1].clone();
            t["namespace"] = "io.crmsync.events".into();
            t
        };
        let own = |rt: RecordType| -> serde_json::Value { serde_json::from_str(rt.current_text()).unwrap() };
        let email = embedded("email");
        assert_eq!(parsing_canonical_form(&email).unwrap(), parsing_canonical_form(&own(RecordType::NormalisedEmail)).unwrap());
        let address = email["fields"].as_array().unwrap().iter().find(|f| f["name"] == "from").unwrap()["type"].clone();
        let mut meeting = embedded("meeting");
        fn inline(v: &mut serde_json::Value, address: &serde_json::Value) {
            match v {
                serde_json::Value::String(s) if s == "EmailAddress" => *v = address.clone(),
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| inline(x, address)),
                serde_json::Value::Object(o) => o
                    .iter_mut()
                    .filter(|(k, _)| k.as_str() == "type" || k.as_str() == "items" || k.as_str() == "fields")
                    .for_each(|(_, x)| inline(x, address)),
                _ => {}
            }
        }
        inline(&mut meeting, &address);
        assert_eq!(parsing_canonical_form(&meeting).unwrap(), parsing_canonical_form(&own(RecordType::NormalisedMeeting)).unwrap());
        // The lead shares no named type with the email or the meeting.
        assert_eq!(parsing_canonical_form(&embedded("lead")).unwrap(), parsing_canonical_form(&own(RecordType::NormalisedLead)).unwrap());
    }

    #[test]
    fn every_field_is_documented() {
        fn walk(v: &serde_json::Value, path: &str) {
            if let Some(fields) = v.get("fields").and_then(|f| f.as_array()) {
                assert!(v.get("doc").is_some(), "{path}: record without doc");
                for f in fields {
                    let name = f["name"].as_str().unwrap();
                    assert!(f.get("doc").and_then(|d| d.as_str()).is_some_and(|d| !d.is_empty()), "{path}.{name} has no doc");
                    walk(&f["type"], &format!("{path}.{name}"));
                }
            }
            if let Some(branches) = v.as_array() {
                for b in branches {
                    walk(b, path);
                }
            }
            if v.get("symbols").is_some() {
                assert!(v.get("doc").is_some(), "{path}: enum without doc");
            }
            if let Some(t) = v.get("type").filter(|t| t.is_object() || t.is_array()) {
                walk(t, path);
            }
        }
        for rt in RecordType::ALL {
            walk(&serde_json::from_str(rt.current_text()).unwrap(), rt.file_stem());
        }
    }
}
