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

use crate::api::{Api, Exchange, Failure};
use crate::connector::TenantOf;
use crate::contract::{same_value, Contract, Ownership, WriteKind};
use crate::people::{Assign, People, PersonCreated, PersonKey};
use crm_common::events::{DlqReason, NormalisedLead, WriteRequest};
use crm_common::tenants::LeadSettings;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Instant;

/// Where a CRM keeps a person: its contacts, or (where it keeps them apart) its leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PersonObject {
    /// HubSpot contacts, Salesforce Contact, Zoho Contacts, Pipedrive persons.
    Contact,
    /// Salesforce Lead (not converted), Zoho Leads.
    Lead,
}

impl PersonObject {
    pub fn as_str(self) -> &'static str {
        object_name(self)
    }

    /// The other of a CRM's two person objects (where it keeps two).
    pub fn other(self) -> PersonObject {
        match self {
            PersonObject::Contact => PersonObject::Lead,
            PersonObject::Lead => PersonObject::Contact,
        }
    }

    pub fn parse(name: &str) -> Option<PersonObject> {
        match name {
            "contact" => Some(PersonObject::Contact),
            "lead" => Some(PersonObject::Lead),
            _ => None,
        }
    }
}

/// Which of the lead's keys found a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    Email,
    Phone,
    /// The person claim remembered the record an earlier lead of theirs was written as
    /// (read by id: no search lag).
    Recorded,
    /// The create was refused because the person exists (HubSpot's unique email, a
    /// Salesforce duplicate rule): a search had not shown them yet.
    CreateRefused,
}

impl MatchedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedBy::Email => "email",
            MatchedBy::Phone => "phone",
            MatchedBy::Recorded => "the record crm-sync wrote for this person before",
            MatchedBy::CreateRefused => "the CRM's answer to a create (the person exists; its search did not show them yet)",
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

pub use crm_common::tenants::OnAmbiguous;

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

/// A value a person "has": anything but absent, null, blank text, or the placeholder a
/// required field got when a lead did not say ([`crate::mapping::NOT_PROVIDED`]: a later lead
/// with the real name fills it).
fn has_value(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty() && s.trim() != crate::mapping::NOT_PROVIDED,
        Some(_) => true,
    }
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
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
        // A placeholder fills a required field of a new person only; to an existing person
        // it is no value.
        let value = wanted.get(field).filter(|v| if current.is_some() { has_value(Some(v)) } else { !is_blank(v) });
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

/// What a lead write needs besides the lead: decided by the writer.
pub struct LeadWrite<'a> {
    /// The tenant's lead contract (its overrides applied).
    pub contract: &'a Contract,
    pub settings: &'a LeadSettings,
    /// Whether a new person's owner is left to the CRM's assignment rules (`leads.owner =
    /// "crm"`); otherwise the `new_owner` of [`write_lead`] gives it.
    pub crm_assigns: bool,
    /// The person the person claim remembers (an earlier lead of theirs was written so).
    pub known: Option<(PersonObject, String)>,
    /// The claim keys every request carries (the lead's and the person's).
    pub fence: Vec<String>,
}

/// A lead written: the person, and the account of it for the audit.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadWritten {
    pub object: PersonObject,
    pub id: String,
    pub created: bool,
    /// Which person, and how they were found ([`Resolution::describe`]).
    pub matched: String,
    pub fields: PersonWrite,
}

impl LeadWritten {
    /// The audit detail: which person and every field's decision.
    pub fn describe(&self) -> String {
        let fields = self.fields.to_string();
        let sent = if self.fields.is_empty() && !self.created { "nothing to change" } else { "fields" };
        format!("{}; {sent}: {fields}", self.matched)
    }
}

/// How a lead write ended, short of a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum LeadOutcome {
    Written(LeadWritten),
    /// Several people, and the tenant reviews such leads (`AMBIGUOUS_MATCH`).
    Ambiguous(Resolution),
}

/// The contract's fields a lead write decides, with the tenant's consent fields (owned:
/// the latest consent stands), in a fixed order.
fn rules_of<'a>(contract: &'a Contract, settings: &'a LeadSettings) -> Vec<(&'a str, Ownership)> {
    let mut rules: Vec<(&str, Ownership)> = contract.fields.iter().map(|(f, r)| (f.as_str(), r.ownership)).collect();
    rules.extend(settings.consent_fields.values().map(|f| (f.as_str(), Ownership::Owned)));
    rules
}

/// The lead's value of every field it has one for: the contract's (as a create would send
/// them) and the consent the tenant maps.
fn wanted_of(req: &WriteRequest, lead: &NormalisedLead, w: &LeadWrite<'_>) -> Map<String, Value> {
    let mut wanted = w.contract.values(req, WriteKind::Create);
    for (consent, field) in &w.settings.consent_fields {
        if let Some(v) = lead.consent.get(consent).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            wanted.insert(field.clone(), Value::String(v.to_string()));
        }
    }
    wanted
}

/// The fields `object` has among those asked for: a contract field only another object has
/// (`only_on`, a Lead's Company) is not asked of it (a query naming an unknown field fails).
pub fn fields_on(contract: Option<&Contract>, object: PersonObject, fields: &[String]) -> Vec<String> {
    let elsewhere =
        |f: &str| contract.and_then(|c| c.fields.get(f)).and_then(|r| r.only_on.as_deref()).is_some_and(|o| o != object.as_str());
    fields.iter().filter(|f| !elsewhere(f)).cloned().collect()
}

/// A write's fields as `object` has them: a field only another object has (`only_on`) is
/// left out, and its decision dropped.
fn for_object(contract: &Contract, object: PersonObject, mut w: PersonWrite) -> PersonWrite {
    let elsewhere = |f: &str| contract.fields.get(f).and_then(|r| r.only_on.as_deref()).is_some_and(|o| o != object.as_str());
    w.values.retain(|f, _| !elsewhere(f));
    w.decisions.retain(|d| !elsewhere(&d.field));
    w
}

/// Writes one lead (the rules above, in order): the person the claim remembers, read by
/// id; else the people its email matches, then (none) its phone; [`resolve`] picks one
/// or none; [`decide`] says what to send; a create the CRM refuses because the person
/// exists (its search lagged) becomes an update of that person. Every request is audited
/// in `log`. `new_owner` is asked only when a person is created (a round-robin turn is not
/// spent on an update); None leaves the owner to the CRM.
pub async fn write_lead<C, O, F>(
    c: &C,
    api: &Api,
    t: &TenantOf<C>,
    req: &WriteRequest,
    w: &LeadWrite<'_>,
    new_owner: O,
    log: &mut Vec<Exchange>,
) -> Result<LeadOutcome, Failure>
where
    C: People + ?Sized,
    O: FnOnce() -> F + Send,
    F: std::future::Future<Output = Result<Option<String>, Failure>> + Send,
{
    let WriteRequest::Lead { lead, .. } = req else {
        return Err(Failure::new(DlqReason::Validation, "not a lead (a writer bug)"));
    };
    let rules = rules_of(w.contract, w.settings);
    let fields: Vec<String> = rules.iter().map(|(f, _)| f.to_string()).collect();
    let wanted = wanted_of(req, lead, w);
    let mut resolution = None;
    if let Some((object, id)) = &w.known {
        if let Some(person) = c.read_person(api, t, *object, id, &fields, log).await? {
            resolution = Some(Resolution::Update { person, matched_by: MatchedBy::Recorded, among: 1 });
        }
    }
    let resolution = match resolution {
        Some(r) => r,
        None => search(c, api, t, lead, &fields, w.settings.on_ambiguous_match, log).await?,
    };
    let matched = resolution.describe();
    let person = match resolution {
        Resolution::Create => None,
        Resolution::Update { person, .. } => Some(person),
        ambiguous @ Resolution::Ambiguous { .. } => return Ok(LeadOutcome::Ambiguous(ambiguous)),
    };
    if let Some(person) = person {
        return update(c, api, t, w, &rules, &wanted, person, matched, log).await;
    }
    let mut write = for_object(w.contract, c.creates_person_as(), decide(rules.iter().copied(), &wanted, None));
    // A new person's owner: the tenant's rule, in the contract's owner field (read-only
    // for people who exist: theirs is the CRM's).
    let owner = if w.crm_assigns { None } else { new_owner().await? };
    let assign = match (w.crm_assigns, w.settings.assignment_rule.as_deref()) {
        (true, Some(rule)) => Assign::CrmRule(rule),
        (true, None) => Assign::Crm,
        (false, _) => Assign::Tenant,
    };
    if let (Some(owner), Some(field)) = (&owner, w.contract.owner_field()) {
        write.values.insert(field.to_string(), w.contract.typed(field, owner.clone()));
        if let Some(d) = write.decisions.iter_mut().find(|d| d.field == field) {
            d.action = FieldAction::Write;
        }
    }
    // Not replay-safe: a create of unknown outcome (a timeout, a 5xx) is not sent again until
    // it can no longer land (the late-write horizon and the search's lag), and then only if
    // a search that completed finds nobody; found, the person is updated. As
    // `connector::create_reading_before_resending` does for activities.
    let first = Instant::now();
    let mut attempt = 0u32;
    let created = loop {
        let f = match c.create_person(api, t, &write.values, assign, &w.fence, log).await {
            Err(f) if f.maybe_applied => f,
            other => break other?,
        };
        attempt += 1;
        crate::places::sleep(api.backoff.wait(attempt).max(api.late_write_horizon() + c.people_lag())).await;
        let again = search(c, api, t, lead, &fields, w.settings.on_ambiguous_match, log).await.map_err(|e| Failure {
            maybe_applied: true,
            detail: format!("{}; searching for the person before creating again failed, so it may be in the CRM: {}", f.detail, e.detail),
            ..f.clone()
        })?;
        match again {
            Resolution::Create if first.elapsed() < api.retry_limit => continue,
            Resolution::Create => {
                return Err(Failure {
                    maybe_applied: false,
                    detail: format!("{} (still failing after {attempt} attempts over {} s)", f.detail, first.elapsed().as_secs()),
                    ..f
                })
            }
            Resolution::Update { person, matched_by, among } => {
                let matched = format!(
                    "{} (found after a create of unknown outcome: {})",
                    Resolution::Update { person: person.clone(), matched_by, among }.describe(),
                    f.detail
                );
                return update(c, api, t, w, &rules, &wanted, person, matched, log).await;
            }
            ambiguous @ Resolution::Ambiguous { .. } => return Ok(LeadOutcome::Ambiguous(ambiguous)),
        }
    };
    match created {
        PersonCreated::Created(object, id) => Ok(LeadOutcome::Written(LeadWritten { object, id, created: true, matched, fields: write })),
        PersonCreated::Exists(object, id) => match c.read_person(api, t, object, &id, &fields, log).await? {
            Some(person) => {
                let matched = Resolution::Update { person: person.clone(), matched_by: MatchedBy::CreateRefused, among: 1 }.describe();
                update(c, api, t, w, &rules, &wanted, person, matched, log).await
            }
            // Refused for a person who is gone by the time they are read: the next attempt
            // searches again.
            None => Err(Failure {
                maybe_applied: false,
                ..Failure::unknown_outcome(
                    format!(
                        "the CRM refused the create because {} {id} has this person's address, and reading them found nobody",
                        object.as_str()
                    ),
                    None,
                )
            }),
        },
    }
}

/// The people the lead's email matches, else (nobody) its phone, resolved by the tenant's
/// rule.
async fn search<C: People + ?Sized>(
    c: &C,
    api: &Api,
    t: &TenantOf<C>,
    lead: &NormalisedLead,
    fields: &[String],
    rule: OnAmbiguous,
    log: &mut Vec<Exchange>,
) -> Result<Resolution, Failure> {
    let by_email = match lead.email.as_deref() {
        Some(e) => c.find_people(api, t, PersonKey::Email(e), fields, log).await?,
        None => vec![],
    };
    let by_phone = match (by_email.is_empty(), lead.phone_e164.as_deref()) {
        (true, Some(p)) => c.find_people(api, t, PersonKey::Phone(p), fields, log).await?,
        _ => vec![],
    };
    Ok(resolve(by_email, by_phone, rule))
}

/// Updates `person` with what the lead may set on them (nothing sent when nothing changes).
#[allow(clippy::too_many_arguments, reason = "the steps of one algorithm, split for its two callers")]
async fn update<C: People + ?Sized>(
    c: &C,
    api: &Api,
    t: &TenantOf<C>,
    w: &LeadWrite<'_>,
    rules: &[(&str, Ownership)],
    wanted: &Map<String, Value>,
    person: Candidate,
    matched: String,
    log: &mut Vec<Exchange>,
) -> Result<LeadOutcome, Failure> {
    let write = for_object(w.contract, person.object, decide(rules.iter().copied(), wanted, Some(&person.fields)));
    if !write.is_empty() {
        c.update_person(api, t, (person.object, &person.id), &write.values, &w.fence, log).await?;
    }
    Ok(LeadOutcome::Written(LeadWritten { object: person.object, id: person.id, created: false, matched, fields: write }))
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
