//! Leads become people: the rules every CRM's lead writer follows, written down once and
//! free of HTTP. A lead is not an activity: before anything is written the CRM's people are
//! searched, and the lead updates the person it is, or creates one. The connectors search
//! and write in their CRMs' terms; which person a lead is ([`resolve`]) and which of their
//! fields a lead may set ([`decide`]) are decided here.
//!
//! **Which person.** The lead's email first, then its phone (both as the normaliser made
//! them; the CRM's values are compared the same way by the connector): an address names one
//! person far more surely than a number, which colleagues and switchboards share. Only when
//! nobody has the address are numbers tried. Among the people one key matched, contacts
//! before leads (Salesforce's Lead and Contact, Zoho's Leads and Contacts): a contact is the
//! person sales already works with, and an unconverted lead with the same address is an
//! older capture of them; updating it would split their history. Several people of the same
//! standing are ambiguous, and the tenant's rule decides: the one most recently updated, or
//! the lead held for review as `AMBIGUOUS_MATCH` (never a guess the tenant did not choose).
//!
//! **Which fields.** The contract's ownership per field, read against the person's current
//! values: `owned` fields (latest-touch attribution, consent the tenant maps) are written
//! whenever they differ; `fill_if_empty` fields (identity: email, phone, names; first-touch
//! attribution) only where the person has no value, so a person's or another source's value
//! is never overwritten; `read_only` fields (lifecycle stage, status, owner, unless the
//! tenant's contract says otherwise) never. Every field's decision, and why, goes into the
//! write's audit record.

use crate::contract::{same_value, Ownership};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// Where a CRM keeps a person: its contacts, or (where it keeps them apart) its leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PersonObject {
    /// HubSpot contacts, Salesforce Contact, Zoho Contacts, Pipedrive persons.
    Contact,
    /// Salesforce Lead (not converted), Zoho Leads.
    Lead,
}

/// Which of the lead's keys found a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    Email,
    Phone,
}

impl MatchedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedBy::Email => "email",
            MatchedBy::Phone => "phone",
        }
    }
}

/// A person a CRM search returned for one of the lead's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub object: PersonObject,
    pub id: String,
    /// When the CRM last changed the person (ms since the epoch; 0 when it did not say).
    pub updated_at_ms: i64,
    /// The person's current values of the contract's fields, as the CRM returned them.
    pub fields: Map<String, Value>,
}

/// The tenant's rule for a lead several people match (`on_ambiguous_match`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAmbiguous {
    /// Update the one the CRM changed last (ties: the lowest id, so replicas agree).
    #[default]
    MostRecentlyUpdated,
    /// Write nothing; dead-letter the lead as `AMBIGUOUS_MATCH` for a person to merge them.
    DeadLetter,
}

/// Which person a lead is.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Nobody has its email or phone: a new person.
    Create,
    /// This person; `among` people of the same standing matched (1 when it was clear-cut).
    Update { person: Candidate, matched_by: MatchedBy, among: usize },
    /// Several people, and the tenant reviews such leads.
    Ambiguous { matched_by: MatchedBy, ids: Vec<(PersonObject, String)> },
}

impl Resolution {
    /// The audit detail's account of the match.
    pub fn describe(&self) -> String {
        match self {
            Resolution::Create => "no person has its email or phone: created".into(),
            Resolution::Update { person, matched_by, among: 1 } => {
                format!("matched {} {} by {}", object_name(person.object), person.id, matched_by.as_str())
            }
            Resolution::Update { person, matched_by, among } => format!(
                "matched {among} people by {}; updated {} {}, the most recently updated (on_ambiguous_match = most_recently_updated)",
                matched_by.as_str(),
                object_name(person.object),
                person.id
            ),
            Resolution::Ambiguous { matched_by, ids } => format!(
                "{} people match by {} ({}); on_ambiguous_match = dead_letter holds the lead until they are merged",
                ids.len(),
                matched_by.as_str(),
                ids.iter().map(|(o, id)| format!("{} {id}", object_name(*o))).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

fn object_name(o: PersonObject) -> &'static str {
    match o {
        PersonObject::Contact => "contact",
        PersonObject::Lead => "lead",
    }
}

/// Which person a lead is, from the people its email matched and those its phone matched
/// (the connector searches the phone only when the email matched nobody, or the lead has
/// no email: `by_phone` is ignored while `by_email` has anyone).
pub fn resolve(by_email: Vec<Candidate>, by_phone: Vec<Candidate>, rule: OnAmbiguous) -> Resolution {
    let (mut found, matched_by) = if by_email.is_empty() { (by_phone, MatchedBy::Phone) } else { (by_email, MatchedBy::Email) };
    // A search may list a person twice (several addresses or numbers of theirs matched).
    found.sort_by(|a, b| (a.object, &a.id).cmp(&(b.object, &b.id)));
    found.dedup_by(|a, b| a.object == b.object && a.id == b.id);
    // Contacts first: leads count only when no contact matched.
    let best = found.iter().map(|c| c.object).min();
    found.retain(|c| Some(c.object) == best);
    match (found.len(), rule) {
        (0, _) => Resolution::Create,
        (1, _) => Resolution::Update { person: found.remove(0), matched_by, among: 1 },
        (n, OnAmbiguous::MostRecentlyUpdated) => {
            // Sorted by id already: max_by keeps the last of equals, so reverse to prefer the lowest id.
            let newest = found.iter().rev().max_by_key(|c| c.updated_at_ms).cloned().expect("n > 1");
            Resolution::Update { person: newest, matched_by, among: n }
        }
        (_, OnAmbiguous::DeadLetter) => Resolution::Ambiguous { matched_by, ids: found.into_iter().map(|c| (c.object, c.id)).collect() },
    }
}

/// What a lead write does with one contract field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldAction {
    /// Sent: a new person's value, an owned field that differs, or an empty field filled.
    Write,
    /// Not sent: `fill_if_empty` and the person already has a value (theirs wins).
    KeepCrmValue,
    /// Not sent: `read_only`, the CRM's (lifecycle, status, owner unless the tenant owns it).
    CrmOwned,
    /// Not sent: the lead has no value for it (nothing is blanked).
    NoValue,
    /// Not sent: owned, and the person already holds this value.
    Unchanged,
}

impl FieldAction {
    fn label(self) -> &'static str {
        match self {
            FieldAction::Write => "written",
            FieldAction::KeepCrmValue => "kept (the CRM has a value)",
            FieldAction::CrmOwned => "the CRM's",
            FieldAction::NoValue => "no value",
            FieldAction::Unchanged => "unchanged",
        }
    }
}

/// One field's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDecision {
    pub field: String,
    pub action: FieldAction,
}

/// A lead write's fields: what is sent, and every contract field's decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonWrite {
    pub values: Map<String, Value>,
    pub decisions: Vec<FieldDecision>,
}

impl PersonWrite {
    /// Whether anything is to be sent (an update that changes nothing sends nothing).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The audit detail's account of the fields, grouped by action in a fixed order:
/// `written: email, firstname; kept (the CRM has a value): lastname; the CRM's: lifecyclestage`.
impl fmt::Display for PersonWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = [FieldAction::Write, FieldAction::KeepCrmValue, FieldAction::Unchanged, FieldAction::CrmOwned, FieldAction::NoValue];
        let groups: Vec<String> = order
            .iter()
            .filter_map(|a| {
                let names: Vec<&str> = self.decisions.iter().filter(|d| d.action == *a).map(|d| d.field.as_str()).collect();
                (!names.is_empty()).then(|| format!("{}: {}", a.label(), names.join(", ")))
            })
            .collect();
        write!(f, "{}", groups.join("; "))
    }
}

/// A value a person "has": anything but absent, null or blank text.
fn has_value(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(_) => true,
    }
}

/// The fields a lead write sends, field by field: `rules` the contract's fields and their
/// ownership, `wanted` the lead's value of each (fields without one absent), `current` the
/// person's values (None: the person is being created).
pub fn decide<'a>(
    rules: impl IntoIterator<Item = (&'a str, Ownership)>,
    wanted: &Map<String, Value>,
    current: Option<&Map<String, Value>>,
) -> PersonWrite {
    let mut out = PersonWrite::default();
    for (field, ownership) in rules {
        let value = wanted.get(field).filter(|v| has_value(Some(v)));
        let now = current.and_then(|c| c.get(field));
        let action = match (ownership, value, current) {
            (Ownership::ReadOnly, ..) => FieldAction::CrmOwned,
            (_, None, _) => FieldAction::NoValue,
            (_, Some(_), None) => FieldAction::Write,
            (Ownership::Owned, Some(v), Some(_)) if now.is_some_and(|n| same_value(v, n)) => FieldAction::Unchanged,
            (Ownership::Owned, Some(_), Some(_)) => FieldAction::Write,
            (Ownership::FillIfEmpty, Some(_), Some(_)) if has_value(now) => FieldAction::KeepCrmValue,
            (Ownership::FillIfEmpty, Some(_), Some(_)) => FieldAction::Write,
        };
        if let (FieldAction::Write, Some(v)) = (action, value) {
            out.values.insert(field.to_string(), v.clone());
        }
        out.decisions.push(FieldDecision { field: field.to_string(), action });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn person(object: PersonObject, id: &str, updated: i64) -> Candidate {
        Candidate { object, id: id.into(), updated_at_ms: updated, fields: Map::new() }
    }
    use PersonObject::{Contact, Lead};

    #[test]
    fn email_before_phone_and_contacts_before_leads() {
        let by_email = vec![person(Lead, "00Q1", 5)];
        let by_phone = vec![person(Contact, "003", 9)];
        // The address decides while it matches anyone: the phone's contact is not looked at.
        match resolve(by_email.clone(), by_phone.clone(), OnAmbiguous::DeadLetter) {
            Resolution::Update { person, matched_by: MatchedBy::Email, among: 1 } => assert_eq!(person.id, "00Q1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolve(vec![], by_phone, OnAmbiguous::DeadLetter), Resolution::Update { matched_by: MatchedBy::Phone, .. }));
        // A contact and an unconverted lead with the same address: the contact, not ambiguous.
        let both = vec![person(Lead, "00Q1", 99), person(Contact, "003", 1)];
        match resolve(both, vec![], OnAmbiguous::DeadLetter) {
            Resolution::Update { person, among: 1, .. } => assert_eq!((person.object, person.id.as_str()), (Contact, "003")),
            other => panic!("{other:?}"),
        }
        assert_eq!(resolve(vec![], vec![], OnAmbiguous::DeadLetter), Resolution::Create);
    }

    #[test]
    fn several_people_follow_the_tenants_rule() {
        let twins = vec![person(Contact, "b", 10), person(Contact, "a", 20), person(Contact, "c", 20), person(Contact, "b", 10)];
        match resolve(twins.clone(), vec![], OnAmbiguous::MostRecentlyUpdated) {
            Resolution::Update { person, among, .. } => {
                assert_eq!((person.id.as_str(), among), ("a", 3), "newest; a tie goes to the lowest id; a person listed twice counts once")
            }
            other => panic!("{other:?}"),
        }
        let held = resolve(twins, vec![], OnAmbiguous::DeadLetter);
        assert_eq!(
            held,
            Resolution::Ambiguous {
                matched_by: MatchedBy::Email,
                ids: vec![(Contact, "a".into()), (Contact, "b".into()), (Contact, "c".into())]
            }
        );
        assert!(held.describe().contains("3 people match by email (contact a, contact b, contact c)"), "{}", held.describe());
        // Whatever order the CRM lists them in, replicas pick the same person.
        let a = resolve(vec![person(Contact, "x", 7), person(Contact, "y", 7)], vec![], OnAmbiguous::MostRecentlyUpdated);
        let b = resolve(vec![person(Contact, "y", 7), person(Contact, "x", 7)], vec![], OnAmbiguous::MostRecentlyUpdated);
        assert_eq!(a, b);
    }

    fn rules() -> Vec<(&'static str, Ownership)> {
        vec![
            ("email", Ownership::FillIfEmpty),
            ("firstname", Ownership::FillIfEmpty),
            ("lastname", Ownership::FillIfEmpty),
            ("phone", Ownership::FillIfEmpty),
            ("first_campaign", Ownership::FillIfEmpty),
            ("latest_campaign", Ownership::Owned),
            ("marketing_consent", Ownership::Owned),
            ("lifecyclestage", Ownership::ReadOnly),
        ]
    }

    #[test]
    fn a_new_person_gets_every_value_the_lead_has_and_nothing_the_crm_owns() {
        let wanted = json!({"email": "jane@x.example", "firstname": "Jane", "lastname": "", "first_campaign": "spring", "latest_campaign": "spring", "lifecyclestage": "lead"});
        let w = decide(rules(), wanted.as_object().unwrap(), None);
        assert_eq!(w.values.keys().collect::<Vec<_>>(), ["email", "first_campaign", "firstname", "latest_campaign"]);
        assert_eq!(
            w.to_string(),
            "written: email, firstname, first_campaign, latest_campaign; the CRM's: lifecyclestage; no value: lastname, phone, marketing_consent"
        );
    }

    #[test]
    fn an_existing_persons_values_win_where_the_lead_may_only_fill() {
        let wanted = json!({"email": "jane@x.example", "firstname": "Janet", "phone": "+14155552671", "first_campaign": "autumn", "latest_campaign": "autumn", "marketing_consent": "true"});
        let current = json!({"email": "jane@x.example", "firstname": "Jane", "phone": "  ", "first_campaign": "spring", "latest_campaign": "spring", "marketing_consent": "true", "lifecyclestage": "customer"});
        let w = decide(rules(), wanted.as_object().unwrap(), current.as_object());
        // A blank phone is filled; the names and the first touch are the person's; the latest
        // touch moves; consent already says so.
        assert_eq!(w.values, *json!({"phone": "+14155552671", "latest_campaign": "autumn"}).as_object().unwrap());
        assert_eq!(
            w.to_string(),
            "written: phone, latest_campaign; kept (the CRM has a value): email, firstname, first_campaign; unchanged: marketing_consent; the CRM's: lifecyclestage; no value: lastname"
        );
        let same = decide(rules(), current.as_object().unwrap(), current.as_object());
        assert!(same.is_empty(), "an update that changes nothing sends nothing: {same:?}");
    }
}
