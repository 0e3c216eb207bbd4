//! TENANTS_CONFIG: who our tenants are, how to read their numbers and which CRMs they have
//! connected. A TOML file, loaded at start; a bad file stops the service with a message
//! naming the problem rather than half-working. Services follow changes to it while they
//! run (`live_tenants`). See deploy/tenants.example.toml.

use crate::events::{ActivityKind, Crm};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    #[serde(default)]
    pub tenants: BTreeMap<String, Tenant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// ISO 3166-1 alpha-2 region for numbers in national format when the event has no
    /// region_hint.
    pub default_region: String,
    /// Audit records mask phone numbers unless this is true.
    #[serde(default)]
    pub show_phone_numbers_in_audit: bool,
    /// Connected CRMs by name (`hubspot`, `salesforce`, `zoho`, `pipedrive`).
    #[serde(default)]
    pub crms: BTreeMap<String, CrmConnection>,
    /// How long the deduper suppresses a repeat of a call ("24h", "90m"); default 24h.
    #[serde(default)]
    pub dedup_window: Option<String>,
    /// Per-source windows, by the events' `source`, overriding `dedup_window`.
    #[serde(default)]
    pub dedup_windows: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmConnection {
    /// The tenant's plan at the CRM; selects the rate-limit policy.
    pub plan: String,
    /// Name of the secret (an environment variable in dev, a Kubernetes secret key in
    /// deploy/) holding the credentials. Never the credentials themselves.
    pub credentials_secret: String,
    /// Base URL override (crm-sim in dev and tests; the org's instance URL at Salesforce).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Where OAuth refreshes go, when not the CRM's usual place (a Zoho data centre's
    /// accounts host, a Salesforce sandbox's login host). Default: under `base_url` when that
    /// is set, else the CRM's public token endpoint.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Account id at the CRM (portal, org, company), where the API needs it.
    #[serde(default)]
    pub account: Option<String>,
    /// Overrides of the plan's limits by name (e.g. HubSpot `burst_per_10s`, `daily`,
    /// `search_per_s`): for plans bought with add-ons, and for tests against crm-sim.
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// When no CRM contact has the call's number: `log_unassociated` (default: write the
    /// call without a contact) or `create_contact`. Audited either way.
    #[serde(default)]
    pub on_no_contact: NoContact,
    /// Minutes east of UTC of the account's zone, where daily limits reset at midnight.
    #[serde(default)]
    pub tz_offset_min: i32,
    /// How often the reconciler checks this CRM for this tenant ("1h", "15m"); the
    /// reconciler's `--every` when absent.
    #[serde(default)]
    pub reconcile_every: Option<String>,
    /// What the reconciler does with a record someone deleted in the CRM: `dead_letter`
    /// (default: their decision stands, and the DLQ says so) or `recreate`.
    #[serde(default)]
    pub on_deleted: OnDeleted,
    /// The kinds of activity written to this CRM: `["call"]` unless the tenant asks for
    /// more (`["call", "email", "meeting"]`). A tenant connected before emails and meetings
    /// were carried keeps getting calls only. The deduper fans each kind out only to the
    /// CRMs that take it; a writer refuses to start for a kind it cannot write.
    #[serde(default = "calls_only", deserialize_with = "activity_kinds")]
    pub activities: BTreeSet<ActivityKind>,
    /// The CRM user who owns each actor's activities, by the actor's id at the source (a
    /// call's `agent_id`, an email's or meeting's `actor_id`) → the CRM's user (owner) id.
    /// It wins over the lookup by the actor's email, and fills in where the source gives
    /// no email or the CRM user's address differs.
    #[serde(default)]
    pub owners: BTreeMap<String, String>,
    /// When an activity's actor has no CRM user: `integration_user` (default: written
    /// without an owner, so the CRM makes the integration's user its owner, and the audit
    /// flags it) or `dead_letter` (held as ACTOR_UNMAPPED for review, replayed once mapped).
    #[serde(default)]
    pub on_unmapped_actor: UnmappedActor,
    /// The tenant's overrides of the field contract, by kind then field:
    /// `fields = { call = { hs_call_title = "owned" }, meeting = { hubspot_owner_id = { ownership = "owned", restorable = true } } }`.
    /// The contracts in `contracts/` are the defaults; a writer and the reconciler check
    /// each override against them at start and refuse one that would write a field the
    /// contract has no value for, change the key, or overwrite a field the CRM does not
    /// let be changed.
    #[serde(default)]
    pub fields: BTreeMap<String, BTreeMap<String, FieldOverride>>,
    /// Which of the contact's open deals an activity is associated with: `single_open`
    /// (default: the deal only when the contact has exactly one open deal), `most_recent_open`
    /// (the one changed last) or `none`. The contact's primary company is always associated.
    #[serde(default)]
    pub deal_rule: DealRule,
    /// What this connection does with leads (when `activities` names "lead").
    #[serde(default)]
    pub leads: LeadSettings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DealRule {
    None,
    #[default]
    SingleOpen,
    MostRecentOpen,
}

/// Who owns a field (DESIGN §7): the contracts' rule, and a tenant's override of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    /// crm-sync's: written on create and on every update; the reconciler may put it back.
    Owned,
    /// Set on create, never overwritten: people's edits in the CRM win.
    FillIfEmpty,
    /// Never written.
    ReadOnly,
}

/// A tenant's rule for one contract field: an ownership, or a table with `restorable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FieldOverride {
    Ownership(Ownership),
    Rule {
        ownership: Ownership,
        #[serde(default)]
        restorable: bool,
    },
}

impl FieldOverride {
    pub fn ownership(&self) -> Ownership {
        match *self {
            FieldOverride::Ownership(o) | FieldOverride::Rule { ownership: o, .. } => o,
        }
    }

    pub fn restorable(&self) -> bool {
        matches!(*self, FieldOverride::Rule { restorable: true, .. })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedActor {
    #[default]
    IntegrationUser,
    DeadLetter,
}

fn calls_only() -> BTreeSet<ActivityKind> {
    BTreeSet::from([ActivityKind::Call])
}

fn activity_kinds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeSet<ActivityKind>, D::Error> {
    let names: Vec<String> = Vec::deserialize(d)?;
    if names.is_empty() {
        return Err(serde::de::Error::custom("activities is empty: name at least one of call, email, meeting"));
    }
    let kinds: BTreeSet<ActivityKind> = names.iter().map(|n| n.parse().map_err(serde::de::Error::custom)).collect::<Result<_, _>>()?;
    Ok(kinds)
}

/// The CRMs whose writers write leads (their people search and writes): a connection to
/// another CRM that names "lead" is refused when the tenants file is read.
pub const LEAD_CRMS: &[Crm] = &[Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive];

/// What a tenant's connection does with leads (`leads = { ... }` under the connection).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadSettings {
    /// A lead several people of the same standing match: `most_recently_updated` (default)
    /// or `dead_letter` (held as AMBIGUOUS_MATCH for a person to merge them).
    #[serde(default)]
    pub on_ambiguous_match: OnAmbiguous,
    /// Who owns a person a lead creates: `"crm"` (default: the CRM's own assignment rules
    /// where it has them, Salesforce's active lead rule or `assignment_rule`, Zoho's
    /// `assignment_rule`; else the CRM's default owner),
    /// `{ fixed = "<user id>" }`, or `{ round_robin = ["<user id>", ...] }` (in turn,
    /// fair across writer replicas: the turn is counted in Redis). An existing person's
    /// owner is the CRM's unless the tenant's contract makes the owner field owned.
    #[serde(default)]
    pub owner: LeadOwner,
    /// With `owner = "crm"`: the CRM's lead assignment rule that gives new people their
    /// owner, by id. Zoho runs none through the API unless named (`lar_id`; list them with
    /// `GET /crm/v7/settings/automation/assignment_rules?module=Leads`), so a Zoho
    /// connection that leaves owners to the CRM must name one; Salesforce runs the org's
    /// active rule without it, this one with it (`Sforce-Auto-Assign: <rule id>`); HubSpot
    /// has none an API create can name.
    #[serde(default)]
    pub assignment_rule: Option<String>,
    /// The lead's consent fields carried to the CRM: consent name (as the source sends it
    /// in `consent`) → the CRM field it goes in. Written whenever it changes (the latest
    /// consent stands); names the lead does not carry are left alone.
    #[serde(default)]
    pub consent_fields: BTreeMap<String, String>,
}

/// The tenant's rule for a lead several people match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAmbiguous {
    /// Update the one the CRM changed last (ties: the lowest id, so replicas agree).
    #[default]
    MostRecentlyUpdated,
    /// Write nothing; dead-letter the lead as `AMBIGUOUS_MATCH` for a person to merge them.
    DeadLetter,
}

/// Who owns a person a lead creates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeadOwner {
    #[default]
    Crm,
    Fixed(String),
    RoundRobin(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeleted {
    #[default]
    DeadLetter,
    Recreate,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoContact {
    #[default]
    LogUnassociated,
    CreateContact,
}

/// The loaded, validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    tenants: HashMap<String, ResolvedTenant>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTenant {
    pub id: String,
    pub default_region: phonenumber::country::Id,
    pub show_phone_numbers_in_audit: bool,
    pub crms: BTreeMap<Crm, CrmConnection>,
    pub dedup_window: Duration,
    pub dedup_windows: HashMap<String, Duration>,
}

/// The deduper's window when a tenant names none.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl ResolvedTenant {
    /// The CRMs this tenant has connected that take `kind` (their `activities`).
    pub fn crms_taking(&self, kind: ActivityKind) -> impl Iterator<Item = Crm> + '_ {
        self.crms.iter().filter(move |(_, c)| c.activities.contains(&kind)).map(|(crm, _)| *crm)
    }

    /// `text` as this tenant's audit records and dead letters may show it (`mask_text`).
    pub fn masked(&self, text: &str) -> String {
        mask_text(self.show_phone_numbers_in_audit, text)
    }

    /// Whether `other` is this tenant configured the same way (a reload reports it changed
    /// otherwise).
    pub fn same_as(&self, other: &ResolvedTenant) -> bool {
        self == other
    }

    /// The dedup window for events from `source`.
    pub fn dedup_window_for(&self, source: &str) -> Duration {
        self.dedup_windows.get(source).copied().unwrap_or(self.dedup_window)
    }
}

/// Text people read (audit details, dead letters' details and CRM excerpts) with the
/// customers' contact details masked: email addresses always, phone numbers unless the
/// tenant shows them (`show_phone_numbers_in_audit`). A dead letter's payload, kept whole
/// for replay, is where the values are.
pub fn mask_text(show_numbers: bool, text: &str) -> String {
    let text = crate::email::mask_in_text(text);
    if show_numbers {
        text
    } else {
        crate::phone::mask_in_text(&text)
    }
}

fn window(id: &str, what: &str, text: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(text).map_err(|e| anyhow::anyhow!("tenant '{id}': {what} {text:?}: {e}"))?;
    anyhow::ensure!(!d.is_zero(), "tenant '{id}': {what} must be longer than zero");
    Ok(d)
}

impl Tenants {
    pub fn load(path: &Path) -> anyhow::Result<Tenants> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read TENANTS_CONFIG {}: {e}", path.display()))?;
        Tenants::parse(&text).map_err(|e| anyhow::anyhow!("TENANTS_CONFIG {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Tenants> {
        let file: TenantsFile = toml::from_str(text)?;
        let mut tenants = HashMap::new();
        for (id, t) in file.tenants {
            // Ids appear in Kafka keys, Redis hash tags (`{id}`) and idempotency keys
            // (`id:call:crm`): keep them to characters that mean nothing in any of those.
            anyhow::ensure!(
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "tenant id {id:?}: use 1-64 of A-Z a-z 0-9 . _ -"
            );
            let region = crate::phone::region(&t.default_region).map_err(|e| anyhow::anyhow!("tenant '{id}': default_region: {e}"))?;
            let mut crms = BTreeMap::new();
            for (name, conn) in t.crms {
                let crm: Crm = name.parse().map_err(|e| anyhow::anyhow!("tenant '{id}': crms: {e}"))?;
                if let Some(every) = &conn.reconcile_every {
                    window(&id, &format!("crms.{name}.reconcile_every"), every)?;
                }
                for (kind, rules) in &conn.fields {
                    let k: ActivityKind = kind.parse().map_err(|e| anyhow::anyhow!("tenant '{id}': crms.{name}.fields.{kind}: {e}"))?;
                    anyhow::ensure!(
                        conn.activities.contains(&k),
                        "tenant '{id}': crms.{name}.fields.{kind}: this connection does not take {kind}s (activities)"
                    );
                    for (field, rule) in rules {
                        anyhow::ensure!(
                            !rule.restorable() || rule.ownership() == Ownership::Owned,
                            "tenant '{id}': crms.{name}.fields.{kind}.{field}: only an owned field can be restorable"
                        );
                    }
                }
                if conn.activities.contains(&ActivityKind::Lead) {
                    anyhow::ensure!(
                        LEAD_CRMS.contains(&crm),
                        "tenant '{id}': crms.{name}.activities: crm-sync does not write leads to {name} yet (it does to {}); leave \"lead\" out here",
                        LEAD_CRMS.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                    );
                }
                match &conn.leads.owner {
                    LeadOwner::Fixed(u) => anyhow::ensure!(
                        !u.trim().is_empty() && !u.contains(char::is_whitespace),
                        "tenant '{id}': crms.{name}.leads.owner.fixed: name the CRM user id"
                    ),
                    LeadOwner::RoundRobin(users) => anyhow::ensure!(
                        !users.is_empty() && users.iter().all(|u| !u.trim().is_empty() && !u.contains(char::is_whitespace)),
                        "tenant '{id}': crms.{name}.leads.owner.round_robin: name one or more CRM user ids"
                    ),
                    LeadOwner::Crm => {}
                }
                let leads_on = conn.activities.contains(&ActivityKind::Lead);
                match (&conn.leads.assignment_rule, &conn.leads.owner, crm) {
                    (Some(r), ..) if r.trim().is_empty() || r.contains(char::is_whitespace) => {
                        anyhow::bail!("tenant '{id}': crms.{name}.leads.assignment_rule: name the rule's id")
                    }
                    (Some(_), LeadOwner::Fixed(_) | LeadOwner::RoundRobin(_), _) => anyhow::bail!(
                        "tenant '{id}': crms.{name}.leads.assignment_rule: the owner is the tenant's rule here (leads.owner); \
                         an assignment rule applies with owner = \"crm\""
                    ),
                    // developer.salesforce.com, AssignmentRuleHeader: "If the value is not in the
                    // correct ID format (15-character or 18-character Salesforce ID), the call
                    // fails and a MALFORMED_ID exception is returned"; an AssignmentRule's ids
                    // start with its key prefix, 01Q.
                    (Some(r), _, Crm::Salesforce) if !is_assignment_rule_id(r) => anyhow::bail!(
                        "tenant '{id}': crms.{name}.leads.assignment_rule: {r:?} is not a Salesforce AssignmentRule id (15 or 18 letters \
                         and digits starting 01Q; SELECT Id, Name FROM AssignmentRule WHERE SobjectType = 'Lead' lists them): \
                         Salesforce would refuse every new lead with MALFORMED_ID"
                    ),
                    (Some(_), _, Crm::Hubspot | Crm::Pipedrive) => anyhow::bail!(
                        "tenant '{id}': crms.{name}.leads.assignment_rule: {name} has no lead assignment rule an API create can name"
                    ),
                    (None, LeadOwner::Crm, Crm::Zoho) if leads_on => anyhow::bail!(
                        "tenant '{id}': crms.{name}.leads: Zoho runs no lead assignment rule through the API unless it is named \
                         (every new lead would be the integration user's): set assignment_rule = \"<rule id>\" (GET \
                         /crm/v7/settings/automation/assignment_rules?module=Leads lists them), or owner = {{ fixed = ... }} \
                         or {{ round_robin = [...] }}"
                    ),
                    _ => {}
                }
                for (consent, field) in &conn.leads.consent_fields {
                    anyhow::ensure!(
                        !consent.trim().is_empty() && !field.trim().is_empty() && !field.contains(char::is_whitespace),
                        "tenant '{id}': crms.{name}.leads.consent_fields: {consent:?} = {field:?}: name a consent and the CRM field it goes in"
                    );
                }
                for (actor, user) in &conn.owners {
                    anyhow::ensure!(
                        !actor.trim().is_empty() && !user.trim().is_empty() && !user.contains(char::is_whitespace),
                        "tenant '{id}': crms.{name}.owners: {actor:?} = {user:?}: name an actor id and the CRM user id it maps to"
                    );
                }
                crms.insert(crm, conn);
            }
            let dedup_window = match &t.dedup_window {
                Some(w) => window(&id, "dedup_window", w)?,
                None => DEFAULT_DEDUP_WINDOW,
            };
            let mut dedup_windows = HashMap::new();
            for (source, w) in &t.dedup_windows {
                dedup_windows.insert(source.clone(), window(&id, &format!("dedup_windows.{source}"), w)?);
            }
            tenants.insert(
                id.clone(),
                ResolvedTenant {
                    id,
                    default_region: region,
                    show_phone_numbers_in_audit: t.show_phone_numbers_in_audit,
                    crms,
                    dedup_window,
                    dedup_windows,
                },
            );
        }
        Ok(Tenants { tenants })
    }

    pub fn get(&self, id: &str) -> Option<&ResolvedTenant> {
        self.tenants.get(id)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Every tenant id, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.tenants.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// A Salesforce AssignmentRule id: 15 or 18 letters and digits, its key prefix 01Q.
pub fn is_assignment_rule_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.starts_with("01Q") && id.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_in_deploy_loads() {
        let t = Tenants::parse(include_str!("../../../deploy/tenants.example.toml")).unwrap();
        assert!(t.len() >= 3);
        let acme = t.get("acme").unwrap();
        assert_eq!(acme.default_region, phonenumber::country::Id::US);
        assert!(acme.crms.contains_key(&Crm::Hubspot));
    }

    #[test]
    fn dedup_windows_per_source_with_a_default() {
        let t = Tenants::parse("[tenants.a]\ndefault_region = \"US\"\ndedup_window = \"90m\"\n[tenants.a.dedup_windows]\nbackfill = \"7d\"\n[tenants.b]\ndefault_region = \"US\"\n").unwrap();
        let a = t.get("a").unwrap();
        assert_eq!(a.dedup_window_for("pbx"), Duration::from_secs(90 * 60));
        assert_eq!(a.dedup_window_for("backfill"), Duration::from_secs(7 * 86_400));
        assert_eq!(t.get("b").unwrap().dedup_window_for("pbx"), DEFAULT_DEDUP_WINDOW);
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"US\"\ndedup_window = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("dedup_window"), "{e}");
        assert!(Tenants::parse("[tenants.a]\ndefault_region = \"US\"\ndedup_window = \"0s\"\n").is_err());
    }

    #[test]
    fn owners_map_and_unmapped_actor_policy() {
        let t = Tenants::parse(
            "[tenants.a]\ndefault_region = \"US\"\n[tenants.a.crms.hubspot]\nplan = 'starter'\ncredentials_secret = 'S'\non_unmapped_actor = 'dead_letter'\n[tenants.a.crms.hubspot.owners]\n\"agent-7\" = \"901\"\n",
        )
        .unwrap();
        let c = &t.get("a").unwrap().crms[&Crm::Hubspot];
        assert_eq!(c.owners.get("agent-7").map(String::as_str), Some("901"));
        assert_eq!(c.on_unmapped_actor, UnmappedActor::DeadLetter);
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"US\"\n[tenants.a.crms.hubspot]\nplan = 'starter'\ncredentials_secret = 'S'\n[tenants.a.crms.hubspot.owners]\n\"agent-7\" = \"\"\n").unwrap_err();
        assert!(e.to_string().contains("owners"), "{e}");
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"US\"\n[tenants.a.crms.hubspot]\nplan = 'starter'\ncredentials_secret = 'S'\non_unmapped_actor = 'ignore'\n").unwrap_err();
        assert!(e.to_string().contains("on_unmapped_actor") || e.to_string().contains("ignore"), "{e}");
    }

    #[test]
    fn tenant_ids_are_safe_in_keys() {
        for bad in ["\"a:b\"", "\"a{b}\"", "\"a b\""] {
            let e = Tenants::parse(&format!("[tenants.{bad}]\ndefault_region = \"US\"\n")).unwrap_err();
            assert!(e.to_string().contains("tenant id"), "{bad}: {e}");
        }
        assert!(Tenants::parse("[tenants.\"acme-eu.2\"]\ndefault_region = \"US\"\n").is_ok());
    }

    #[test]
    fn mistakes_are_named() {
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"XX\"\n").unwrap_err();
        assert!(e.to_string().contains("tenant 'a'"), "{e}");
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"US\"\nregoin = 1\n").unwrap_err();
        assert!(e.to_string().contains("regoin"), "{e}");
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"US\"\n[tenants.a.crms.dynamics]\nplan='x'\ncredentials_secret='y'\n")
            .unwrap_err();
        assert!(e.to_string().contains("dynamics"), "{e}");
        let conn = |activities: &str| {
            format!("[tenants.a]\ndefault_region = \"US\"\n[tenants.a.crms.hubspot]\nplan='starter'\ncredentials_secret='S'\nactivities = {activities}\n")
        };
        assert!(Tenants::parse(&conn("[\"call\", \"lead\"]")).is_ok(), "HubSpot's writer writes leads");
        let pipedrive = conn("[\"call\", \"lead\"]").replace("crms.hubspot", "crms.pipedrive");
        assert!(Tenants::parse(&pipedrive).is_ok(), "every CRM's writer writes leads");
        let e = Tenants::parse(&format!("{pipedrive}[tenants.a.crms.pipedrive.leads]\nassignment_rule = '1'\n")).unwrap_err();
        assert!(e.to_string().contains("pipedrive has no lead assignment rule"), "{e}");
        // Zoho runs no assignment rule unless named: owners left to it must name one.
        let zoho = |settings: &str| {
            format!("{}[tenants.a.crms.zoho.leads]\n{settings}\n", conn("[\"call\", \"lead\"]").replace("crms.hubspot", "crms.zoho"))
        };
        let e = Tenants::parse(&zoho("")).unwrap_err();
        assert!(e.to_string().contains("set assignment_rule"), "{e}");
        let t = Tenants::parse(&zoho("assignment_rule = '5725767000000123'")).unwrap();
        assert_eq!(t.tenants["a"].crms[&Crm::Zoho].leads.assignment_rule.as_deref(), Some("5725767000000123"));
        assert!(Tenants::parse(&zoho("owner = { fixed = '57' }")).is_ok());
        let e = Tenants::parse(&zoho("owner = { fixed = '57' }\nassignment_rule = '1'")).unwrap_err();
        assert!(e.to_string().contains("applies with owner = \"crm\""), "{e}");
        let leads = |settings: &str| format!("{}[tenants.a.crms.hubspot.leads]\n{settings}\n", conn("[\"lead\"]"));
        let t = Tenants::parse(&leads(
            "on_ambiguous_match = 'dead_letter'\nowner = { round_robin = ['1', '2'] }\nconsent_fields = { marketing = 'hs_opt_in' }",
        ))
        .unwrap();
        let l = &t.tenants["a"].crms[&Crm::Hubspot].leads;
        assert_eq!((l.on_ambiguous_match, &l.owner), (OnAmbiguous::DeadLetter, &LeadOwner::RoundRobin(vec!["1".into(), "2".into()])));
        assert_eq!(Tenants::parse(&leads("owner = 'crm'")).unwrap().tenants["a"].crms[&Crm::Hubspot].leads.owner, LeadOwner::Crm);
        let e = Tenants::parse(&leads("owner = { round_robin = [] }")).unwrap_err();
        assert!(e.to_string().contains("leads.owner.round_robin: name one or more"), "{e}");
        let e = Tenants::parse(&leads("assignment_rule = '01Q'")).unwrap_err();
        assert!(e.to_string().contains("hubspot has no lead assignment rule"), "{e}");
        // A Salesforce rule is an AssignmentRule id, else every create fails MALFORMED_ID.
        let salesforce = |rule: &str| {
            format!(
                "{}[tenants.a.crms.salesforce.leads]\nassignment_rule = '{rule}'\n",
                conn("[\"lead\"]").replace("crms.hubspot", "crms.salesforce").replace("'starter'", "'enterprise'")
            )
        };
        assert!(Tenants::parse(&salesforce("01Q5g000000AbCdEAF")).is_ok());
        assert!(Tenants::parse(&salesforce("01Q5g000000AbCd")).is_ok(), "15 characters");
        for bad in ["5725767000000700001", "01Q5g000000AbCd!", "01Q", "00Q5g000000AbCdEAF"] {
            let e = Tenants::parse(&salesforce(bad)).unwrap_err();
            assert!(e.to_string().contains("is not a Salesforce AssignmentRule id"), "{bad}: {e}");
        }
        let e = Tenants::parse(&leads("owner = 'nobody'")).unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
        let e = Tenants::parse(&conn("[\"fax\"]")).unwrap_err();
        assert!(e.to_string().contains("unknown activity kind 'fax'"), "{e}");
        assert!(Tenants::parse(&conn("[\"email\", \"Meeting\"]")).is_ok());
    }
}
