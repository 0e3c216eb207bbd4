//! Field-ownership contracts (DESIGN §7): one TOML file per CRM in `contracts/`, loaded at
//! start. The writer writes only the fields a contract names as `owned` (always) or
//! `fill_if_empty` (on create); updates touch owned fields only.

use crm_common::events::{ActivityKind, WriteRequest};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

pub use crm_common::tenants::Ownership;

/// The JSON type a CRM wants for a field (values are derived as text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    #[default]
    Text,
    Number,
    Bool,
    /// An address object with the text as its `value` (Pipedrive v2's `location`).
    Address,
    /// A lookup to another record, `{"id": text}` (Zoho's `Owner`).
    Lookup,
}

impl FieldType {
    /// A value derived as `text`, as a field of this type takes it.
    pub fn value_of(self, text: String) -> Value {
        match self {
            FieldType::Text => Value::String(text),
            FieldType::Number => text.parse::<i64>().map(Value::from).unwrap_or(Value::String(text)),
            FieldType::Bool => Value::Bool(text == "true"),
            FieldType::Address => serde_json::json!({ "value": text }),
            FieldType::Lookup => serde_json::json!({ "id": text }),
        }
    }
}

/// Values the writer resolves for a record beyond what the activity says: the sources
/// [`RESOLVED_SOURCES`] name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolved<'a> {
    /// The CRM user who owns the record (source `owner_id`); None leaves the CRM's default.
    pub owner_id: Option<&'a str>,
}

/// Sources every kind's contract may name whose values the writer resolves at write time
/// (not derived from the activity alone).
pub const RESOLVED_SOURCES: &[&str] = &["owner_id"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// A value the writer derives from the activity (`mapping::sources` of the contract's
    /// kind); none for read-only.
    #[serde(default)]
    pub source: Option<String>,
    /// A fixed value instead of a source (Salesforce `TaskSubtype = "Call"`).
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: FieldType,
    pub ownership: Ownership,
    /// The reconciler may put an owned field back when someone changed it in the CRM.
    #[serde(default)]
    pub restorable: bool,
    /// The most characters the CRM's field holds (Salesforce's Subject and Location: 255):
    /// a longer text value is cut at a character boundary rather than refused.
    #[serde(default)]
    pub max_chars: Option<usize>,
    /// Where the activity came from ([`crate::mapping::provenance_text`]) is added below
    /// the field's own text (or is its text, when it has none): for CRMs without fields for
    /// the source system, its id, the recording and the link back.
    #[serde(default)]
    pub append_source: bool,
    /// false where the CRM takes the field on create only (Salesforce's TaskSubtype): it can
    /// never be owned, by the contract or by a tenant's override.
    #[serde(default = "yes")]
    pub updatable: bool,
    /// Where a kind's record may be one of several objects (a lead's person: Salesforce's
    /// Lead or Contact), the one object that has this field (Lead's Company): it is left
    /// out of a write to another.
    #[serde(default)]
    pub only_on: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub crm: String,
    /// The kind of activity this contract writes: `call` (the default, `<crm>.toml`),
    /// `email` (`<crm>.email.toml`) or `meeting` (`<crm>.meeting.toml`).
    #[serde(default = "call_kind", deserialize_with = "kind_named")]
    pub kind: ActivityKind,
    pub object: String,
    /// Where the CRM record carries the idempotency key.
    pub key_field: String,
    /// For a CRM without a field of our own (Pipedrive): the key rides in `key_field`'s
    /// free text after this marker, and the field's own value comes first.
    #[serde(default)]
    pub key_marker: Option<String>,
    pub fields: BTreeMap<String, FieldRule>,
}

fn call_kind() -> ActivityKind {
    ActivityKind::Call
}

fn kind_named<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ActivityKind, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

/// Which write a record is getting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Create,
    Update,
}

impl Contract {
    pub fn load(dir: &Path, crm: &str) -> anyhow::Result<Contract> {
        Contract::load_file(&dir.join(format!("{crm}.toml")), crm, ActivityKind::Call)
    }

    /// The contract in `path`, which must be `crm`'s for `kind`.
    fn load_file(path: &Path, crm: &str, kind: ActivityKind) -> anyhow::Result<Contract> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the field contract {}: {e}", path.display()))?;
        let c = Contract::parse(&text).map_err(|e| anyhow::anyhow!("field contract {}: {e}", path.display()))?;
        anyhow::ensure!(c.crm == crm, "field contract {} is for crm = {:?}, not {crm}", path.display(), c.crm);
        anyhow::ensure!(
            c.kind == kind,
            "field contract {} says kind = {:?}; its name says {}",
            path.display(),
            c.kind.as_str(),
            kind.as_str()
        );
        Ok(c)
    }

    pub fn parse(text: &str) -> anyhow::Result<Contract> {
        let c: Contract = toml::from_str(text)?;
        let sources = crate::mapping::sources(c.kind);
        for (name, rule) in &c.fields {
            anyhow::ensure!(rule.source.is_none() || rule.value.is_none(), "field {name}: a source or a value, not both");
            match (&rule.source, rule.ownership) {
                (None, Ownership::Owned | Ownership::FillIfEmpty) if rule.value.is_none() => {
                    anyhow::bail!("field {name}: a written field needs a source or a value")
                }
                (Some(s), _)
                    if !sources.contains(&s.as_str())
                        && !RESOLVED_SOURCES.contains(&s.as_str())
                        && !crate::mapping::PROVENANCE_SOURCES.contains(&s.as_str()) =>
                {
                    anyhow::bail!("field {name}: unknown source {s:?} for a {} (known: {})", c.kind.as_str(), sources.join(", "))
                }
                _ => {}
            }
            anyhow::ensure!(!rule.restorable || rule.ownership == Ownership::Owned, "field {name}: only owned fields can be restorable");
            anyhow::ensure!(
                rule.updatable || rule.ownership != Ownership::Owned,
                "field {name}: the CRM takes it on create only (updatable = false), so it cannot be owned"
            );
        }
        let key = c.fields.get(&c.key_field);
        if c.kind == ActivityKind::Lead {
            // A person carries no key of ours: who they are is their address, and a lead's
            // key field is where the CRM keeps it (the person search's field).
            anyhow::ensure!(
                key.is_some_and(|r| r.source.as_deref() == Some("email") && r.ownership != Ownership::ReadOnly),
                "key_field {} of a lead contract must be the person's email field, written (source = \"email\")",
                c.key_field
            );
            return Ok(c);
        }
        match &c.key_marker {
            // An email's Message-ID names it within a tenant's CRM as the key does (the key
            // is `<tenant>:email:<Message-ID>:<crm>`): a CRM that deduplicates by Message-ID
            // (Zoho's `original_message_id`) may hold that instead.
            None => anyhow::ensure!(
                key.is_some_and(|r| r.ownership == Ownership::Owned
                    && (r.source.as_deref() == Some("idempotency_key")
                        || (c.kind == ActivityKind::Email && r.source.as_deref() == Some("message_id_header")))),
                "key_field {} must be an owned field with source = \"idempotency_key\" (or, for emails, \"message_id_header\")",
                c.key_field
            ),
            Some(_) => anyhow::ensure!(
                key.is_some_and(|r| r.ownership != Ownership::ReadOnly && r.kind == FieldType::Text),
                "key_field {} carries the key after key_marker: it must be a written text field",
                c.key_field
            ),
        }
        Ok(c)
    }

    /// This contract with a tenant's overrides (field → rule), each checked: the field must
    /// be the contract's (crm-sync has no value for any other), a field written must have a
    /// source or a value, the key field stays owned, and a field the CRM takes on create
    /// only (`updatable = false`) is never owned. Err names the field and why.
    pub fn overridden(&self, overrides: &BTreeMap<String, crm_common::tenants::FieldOverride>) -> Result<Contract, String> {
        let mut c = self.clone();
        for (name, o) in overrides {
            let Some(rule) = c.fields.get_mut(name) else {
                let known: Vec<&str> = self.fields.keys().map(String::as_str).collect();
                return Err(format!(
                    "{name} is not in the {} {} contract, so crm-sync has no value for it (fields: {})",
                    self.crm,
                    self.kind.as_str(),
                    known.join(", ")
                ));
            };
            let ownership = o.ownership();
            if name == &self.key_field && self.kind == ActivityKind::Lead && ownership == Ownership::ReadOnly {
                return Err(format!("{name} holds the person's email, which a lead for a new person must set"));
            }
            if name == &self.key_field && self.kind != ActivityKind::Lead && ownership != Ownership::Owned {
                return Err(format!("{name} holds crm-sync's key: it stays owned"));
            }
            if ownership != Ownership::ReadOnly && rule.source.is_none() && rule.value.is_none() {
                return Err(format!("{name} has no source in the contract: crm-sync has nothing to write there"));
            }
            if ownership == Ownership::Owned && !rule.updatable {
                return Err(format!("{name} cannot be owned: {} takes it on create only and refuses it on update", self.crm));
            }
            rule.ownership = ownership;
            rule.restorable = o.restorable();
        }
        Ok(c)
    }

    /// The (field, rule) pairs this kind of write may set.
    pub fn writable(&self, kind: WriteKind) -> impl Iterator<Item = (&str, &FieldRule)> {
        self.fields
            .iter()
            .filter(move |(_, r)| match r.ownership {
                Ownership::Owned => true,
                Ownership::FillIfEmpty => kind == WriteKind::Create,
                Ownership::ReadOnly => false,
            })
            .map(|(name, r)| (name.as_str(), r))
    }

    /// The fields this kind of write sets for `req`, typed as the CRM wants them. A field
    /// whose source has no value for this call (an open call's duration) is left out, not
    /// blanked. With a `key_marker`, the key field gets the marker and the key appended.
    /// Resolved sources (the owner) have no value here: see [`Contract::values_with`].
    pub fn values(&self, req: &WriteRequest, kind: WriteKind) -> Map<String, Value> {
        self.values_with(req, kind, &Resolved::default())
    }

    /// Whether this kind of write sets a field from the resolved owner (the writer then
    /// resolves the actor's CRM user first).
    pub fn writes_owner(&self, kind: WriteKind) -> bool {
        self.writable(kind).any(|(_, r)| r.source.as_deref() == Some("owner_id"))
    }

    /// The field the owner goes in, if the contract names one (written or not).
    /// `text` as `field` holds it (a lookup's `{"id": …}`; text for a field not named here).
    pub fn typed(&self, field: &str, text: String) -> Value {
        self.fields.get(field).map_or(FieldType::Text, |r| r.kind).value_of(text)
    }

    pub fn owner_field(&self) -> Option<&str> {
        self.fields.iter().find(|(_, r)| r.source.as_deref() == Some("owner_id")).map(|(f, _)| f.as_str())
    }

    /// [`Contract::values`] with what the writer resolved for the record.
    pub fn values_with(&self, req: &WriteRequest, kind: WriteKind, resolved: &Resolved) -> Map<String, Value> {
        let mut out = Map::new();
        for (field, rule) in self.writable(kind) {
            let text = match (&rule.value, &rule.source) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(source)) if source == "owner_id" => resolved.owner_id.map(str::to_string),
                (None, Some(source)) => crate::mapping::value(req, source, kind),
                (None, None) => None,
            };
            let text = if rule.append_source {
                let block = crate::mapping::provenance_text(req);
                Some(match text {
                    Some(t) if !t.trim().is_empty() => format!("{t}\n\n{block}"),
                    _ => block,
                })
            } else {
                text
            };
            let text = match &self.key_marker {
                Some(marker) if field == self.key_field => {
                    let tag = format!("{marker}{}", req.idempotency_key());
                    Some(match text {
                        Some(t) if !t.is_empty() => format!("{t}\n\n{tag}"),
                        _ => tag,
                    })
                }
                _ => text,
            };
            let Some(mut text) = text else { continue };
            if let Some(max) = rule.max_chars {
                if let Some((cut, _)) = text.char_indices().nth(max) {
                    text.truncate(cut);
                }
            }
            out.insert(field.to_string(), rule.kind.value_of(text));
        }
        out
    }

    /// The owned fields a write of `req` sets, as the CRM should hold them now (what the
    /// reconciler compares); fill_if_empty and read-only fields are never compared.
    pub fn owned_values(&self, req: &WriteRequest) -> Map<String, Value> {
        self.owned_values_with(req, &Resolved::default())
    }

    /// [`Contract::owned_values`] with what the writer resolved (the owner it set), so an
    /// owned owner is compared too.
    pub fn owned_values_with(&self, req: &WriteRequest, resolved: &Resolved) -> Map<String, Value> {
        let mut v = self.values_with(req, WriteKind::Update, resolved);
        v.retain(|f, _| self.fields.get(f).is_some_and(|r| r.ownership == Ownership::Owned));
        v
    }

    /// The key in a key field's text (after the marker, up to whitespace or markup).
    pub fn key_in<'a>(&self, text: &'a str) -> Option<&'a str> {
        let Some(marker) = &self.key_marker else { return Some(text) };
        let start = text.find(marker.as_str())? + marker.len();
        let rest = &text[start..];
        let end = rest.find(|c: char| c.is_whitespace() || "<\"]),;".contains(c)).unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    }
}

/// A CRM's contracts, one per kind it writes: `<crm>.toml` for calls (always there), and
/// `<crm>.email.toml`, `<crm>.meeting.toml` where the deployment writes those kinds. A kind
/// without a contract is not written to that CRM (the writer refuses a tenant that asks).
#[derive(Debug, Clone)]
pub struct Contracts {
    by_kind: BTreeMap<ActivityKind, Contract>,
    /// Tenants' own versions, where their `fields` override a rule: replaced whole when the
    /// tenants file changes, shared by every clone.
    by_tenant: Arc<RwLock<&'static TenantContracts>>,
}

/// The tenants' versions of the contracts and the rules they were made from.
///
/// A connector hands out `&Contract` for as long as it lives (`Connector::contract_for_tenant`),
/// while a writer running for weeks takes in new tenants' overrides. Each distinct set of
/// overrides is therefore kept for the life of the process (leaked): a set is a few
/// contracts of a few kilobytes, made only when a reload changes some tenant's `fields`,
/// so a process that sees a hundred such changes keeps well under a megabyte. In exchange
/// no borrow of a contract can outlive its data, without a lock held across a request.
#[derive(Debug, Default)]
struct TenantContracts {
    rules: BTreeMap<(String, ActivityKind), BTreeMap<String, crm_common::tenants::FieldOverride>>,
    contracts: BTreeMap<(String, ActivityKind), Contract>,
}

static NO_OVERRIDES: TenantContracts = TenantContracts { rules: BTreeMap::new(), contracts: BTreeMap::new() };

fn no_overrides() -> Arc<RwLock<&'static TenantContracts>> {
    Arc::new(RwLock::new(&NO_OVERRIDES))
}

impl Contracts {
    pub fn load(dir: &Path, crm: &str) -> anyhow::Result<Contracts> {
        let mut by_kind = BTreeMap::from([(ActivityKind::Call, Contract::load(dir, crm)?)]);
        for kind in [ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead] {
            let path = dir.join(format!("{crm}.{}.toml", kind.as_str()));
            if path.exists() {
                by_kind.insert(kind, Contract::load_file(&path, crm, kind)?);
            }
        }
        Ok(Contracts { by_kind, by_tenant: no_overrides() })
    }

    /// Contracts given directly (tests, benches); the call contract must be among them.
    pub fn of(contracts: impl IntoIterator<Item = Contract>) -> anyhow::Result<Contracts> {
        let by_kind: BTreeMap<ActivityKind, Contract> = contracts.into_iter().map(|c| (c.kind, c)).collect();
        anyhow::ensure!(by_kind.contains_key(&ActivityKind::Call), "a CRM's contracts include its call contract");
        Ok(Contracts { by_kind, by_tenant: no_overrides() })
    }

    /// The call contract.
    pub fn call(&self) -> &Contract {
        &self.by_kind[&ActivityKind::Call]
    }

    pub fn get(&self, kind: ActivityKind) -> Option<&Contract> {
        self.by_kind.get(&kind)
    }

    /// The contract for `kind` as `tenant` has it: with its overrides, else the default.
    pub fn for_tenant(&self, tenant: &str, kind: ActivityKind) -> Option<&Contract> {
        let overrides: &'static TenantContracts = *self.by_tenant.read().unwrap_or_else(|e| e.into_inner());
        overrides.contracts.get(&(tenant.to_string(), kind)).or_else(|| self.by_kind.get(&kind))
    }

    /// These contracts with every tenant's `fields` overrides for `crm` applied and checked;
    /// Err names the tenant, kind and field of the first refused (the service stops).
    pub fn with_tenant_overrides(self, tenants: &crm_common::tenants::Tenants, crm: crm_common::events::Crm) -> anyhow::Result<Contracts> {
        self.set_tenant_overrides(tenants, crm)?;
        Ok(self)
    }

    /// Replaces the tenants' overrides with those `tenants` has for `crm`, every one checked
    /// first; Err (naming the tenant, kind and field) changes nothing. For a tenants file
    /// reloaded while the service runs.
    pub fn set_tenant_overrides(&self, tenants: &crm_common::tenants::Tenants, crm: crm_common::events::Crm) -> anyhow::Result<()> {
        let mut rules = BTreeMap::new();
        for id in tenants.ids() {
            let Some(conn) = tenants.get(&id).and_then(|t| t.crms.get(&crm)) else { continue };
            for (kind, r) in &conn.fields {
                let kind: ActivityKind = kind.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                rules.insert((id.clone(), kind), r.clone());
            }
        }
        let mut current = self.by_tenant.write().unwrap_or_else(|e| e.into_inner());
        if current.rules == rules {
            return Ok(());
        }
        let mut contracts = BTreeMap::new();
        for ((id, kind), rules) in &rules {
            let Some(base) = self.by_kind.get(kind) else {
                anyhow::bail!(
                    "tenant '{id}': crms.{}.fields.{}: this deployment has no {} contract for that kind",
                    crm.as_str(),
                    kind.as_str(),
                    crm.as_str()
                );
            };
            let c = base
                .overridden(rules)
                .map_err(|why| anyhow::anyhow!("tenant '{id}': crms.{}.fields.{}: override refused: {why}", crm.as_str(), kind.as_str()))?;
            contracts.insert((id.clone(), *kind), c);
        }
        *current = Box::leak(Box::new(TenantContracts { rules, contracts }));
        Ok(())
    }

    pub fn kinds(&self) -> impl Iterator<Item = ActivityKind> + '_ {
        self.by_kind.keys().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Contract> {
        self.by_kind.values()
    }
}

impl From<Contract> for Contracts {
    /// A CRM that writes calls only.
    fn from(c: Contract) -> Contracts {
        Contracts { by_kind: BTreeMap::from([(ActivityKind::Call, c)]), by_tenant: no_overrides() }
    }
}

/// A JSON value as the text a CRM shows for it (strings bare, null empty).
pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether the CRM's `live` value is the `expected` one, across the ways CRMs echo values
/// back: numbers as strings, `true` as "true", date-times in another offset or precision,
/// times with seconds ("10:30" is "10:30:00").
pub fn same_value(expected: &Value, live: &Value) -> bool {
    if expected == live {
        return true;
    }
    // A lookup (`{"id": …}`) as the CRM echoes it, with a name beside the id.
    if let (Some(a), Some(b)) = (expected.get("id"), live.get("id")) {
        return same_value(a, b);
    }
    let (a, b) = (as_text(expected), as_text(live));
    if a == b {
        return true;
    }
    // Whole numbers exactly: Zoho's 19-digit ids are equal as f64 when they differ in
    // their last digits.
    if let (Ok(x), Ok(y)) = (a.parse::<i128>(), b.parse::<i128>()) {
        return x == y;
    }
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x == y;
    }
    if let (Ok(x), Ok(y)) = (chrono::DateTime::parse_from_rfc3339(&a), chrono::DateTime::parse_from_rfc3339(&b)) {
        return x == y;
    }
    let time = |s: &str| s.strip_suffix(":00").filter(|t| t.len() == 5).map(str::to_string).unwrap_or_else(|| s.to_string());
    a.len() <= 8 && b.len() <= 8 && a.contains(':') && time(&a) == time(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hubspot_contract_in_the_repo_loads() {
        let c = Contract::parse(include_str!("../../../contracts/hubspot.toml")).unwrap();
        assert_eq!(c.key_field, "crm_sync_key");
        let create: Vec<&str> = c.writable(WriteKind::Create).map(|(f, _)| f).collect();
        assert!(c.key_marker.is_none());
        let update: Vec<&str> = c.writable(WriteKind::Update).map(|(f, _)| f).collect();
        assert!(create.contains(&"hs_call_title") && !update.contains(&"hs_call_title"), "fill_if_empty: create only");
        assert!(update.contains(&"hs_call_status"));
        assert!(create.contains(&"hubspot_owner_id") && !update.contains(&"hubspot_owner_id"), "the owner: on create only");
        assert!(c.writes_owner(WriteKind::Create) && !c.writes_owner(WriteKind::Update));
    }

    #[test]
    fn a_tenants_override_takes_effect_for_that_tenant_and_an_unsafe_one_is_refused() {
        use crm_common::events::Crm;
        use crm_common::tenants::Tenants;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
        let tenants = |crm: &str, fields: &str| {
            Tenants::parse(&format!(
                "[tenants.a]\ndefault_region = 'US'\n[tenants.a.crms.{crm}]\nplan = 'enterprise'\ncredentials_secret = 'S'\nactivities = ['call', 'meeting']\nfields = {fields}\n[tenants.b]\ndefault_region = 'US'\n"
            ))
            .unwrap()
        };
        let t = tenants("hubspot", "{ call = { hs_call_title = 'owned', hs_call_body = 'read_only' }, meeting = { hubspot_owner_id = { ownership = 'owned', restorable = true } } }");
        let all = Contracts::load(&dir, "hubspot").unwrap().with_tenant_overrides(&t, Crm::Hubspot).unwrap();
        let a = all.for_tenant("a", ActivityKind::Call).unwrap();
        let b = all.for_tenant("b", ActivityKind::Call).unwrap();
        let update = |c: &Contract| c.writable(WriteKind::Update).map(|(f, _)| f.to_string()).collect::<Vec<_>>();
        let create = |c: &Contract| c.writable(WriteKind::Create).map(|(f, _)| f.to_string()).collect::<Vec<_>>();
        assert!(update(a).contains(&"hs_call_title".into()) && !update(b).contains(&"hs_call_title".into()), "a's title is owned, b's not");
        assert!(!create(a).contains(&"hs_call_body".into()) && create(b).contains(&"hs_call_body".into()), "a never writes the body");
        let m = all.for_tenant("a", ActivityKind::Meeting).unwrap();
        assert!(m.writes_owner(WriteKind::Update) && m.fields["hubspot_owner_id"].restorable, "a keeps its meetings' owner");
        assert!(!all.for_tenant("b", ActivityKind::Meeting).unwrap().writes_owner(WriteKind::Update));

        let refused = |crm: &str, crm_id: Crm, fields: &str| {
            Contracts::load(&dir, crm).unwrap().with_tenant_overrides(&tenants(crm, fields), crm_id).unwrap_err().to_string()
        };
        let e = refused("hubspot", Crm::Hubspot, "{ call = { hs_createdate = 'owned' } }");
        assert!(e.contains("tenant 'a'") && e.contains("hs_createdate") && e.contains("no value"), "{e}");
        let e = refused("hubspot", Crm::Hubspot, "{ call = { crm_sync_key = 'fill_if_empty' } }");
        assert!(e.contains("key"), "{e}");
        let e = refused("salesforce", Crm::Salesforce, "{ call = { TaskSubtype = 'owned' } }");
        assert!(e.contains("TaskSubtype") && e.contains("create only"), "{e}");
        assert!(Contract::parse(
            &include_str!("../../../contracts/salesforce.toml").replace("updatable = false", "updatable = false\nrestorable = false")
        )
        .is_ok());
    }

    #[test]
    fn every_body_says_where_the_activity_came_from() {
        use crm_common::events::{fixtures, Crm, CrmWriteRequest};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
        let mut call = fixtures::normalised_call("acme", "c-77", 2);
        call.source = "aircall".into();
        call.notes = Some("called back".into());
        call.recording_url = Some("https://rec.example/c-77.mp3".into());
        call.attributes.insert("source_url".into(), "https://app.aircall.example/calls/c-77".into());
        for crm in [Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive] {
            let req = WriteRequest::Call(CrmWriteRequest {
                tenant_id: "acme".into(),
                call_id: "c-77".into(),
                crm,
                idempotency_key: format!("acme:c-77:{}", crm.as_str()),
                version: 2,
                call: call.clone(),
                requested_at: 0,
                trace_id: "t".into(),
            });
            let all = Contracts::load(&dir, crm.as_str()).unwrap();
            let body = all.call().values(&req, WriteKind::Create);
            let text: String = body.values().filter_map(Value::as_str).filter(|t| t.contains("Logged by crm-sync")).collect();
            assert!(text.starts_with("called back\n\nLogged by crm-sync from aircall (call c-77)"), "{crm:?}: {text}");
            assert!(text.contains("Recording: https://rec.example/c-77.mp3"), "{crm:?}: {text}");
            assert!(text.contains("In aircall: https://app.aircall.example/calls/c-77"), "{crm:?}: {text}");
            let email = WriteRequest::try_from(fixtures::email_request("acme", "m1", crm)).unwrap();
            let v = all.get(ActivityKind::Email).unwrap().values(&email, WriteKind::Create);
            assert!(
                v.values().filter_map(Value::as_str).any(|t| t.contains("Logged by crm-sync from gmail-sync (email ")),
                "{crm:?}: {v:?}"
            );
            let meeting = WriteRequest::try_from(fixtures::meeting_request("acme", "ev1", crm)).unwrap();
            let v = all.get(ActivityKind::Meeting).unwrap().values(&meeting, WriteKind::Create);
            assert!(v.values().filter_map(Value::as_str).any(|t| t.contains("from google-calendar (meeting ev1")), "{crm:?}: {v:?}");
        }
        // A link that is not a web address is not written.
        call.attributes.insert("source_url".into(), "javascript:alert(1)".into());
        let req = WriteRequest::Call(CrmWriteRequest {
            tenant_id: "acme".into(),
            call_id: "c-77".into(),
            crm: Crm::Hubspot,
            idempotency_key: "k".into(),
            version: 2,
            call,
            requested_at: 0,
            trace_id: "t".into(),
        });
        assert!(!crate::mapping::provenance_text(&req).contains("javascript"));
    }

    #[test]
    fn the_owner_comes_from_what_the_writer_resolved_typed_per_crm() {
        use crm_common::events::{fixtures::normalised_call, Crm, CrmWriteRequest};
        let req = |crm: Crm| {
            WriteRequest::Call(CrmWriteRequest {
                tenant_id: "acme".into(),
                call_id: "c1".into(),
                crm,
                idempotency_key: format!("acme:c1:{}", crm.as_str()),
                version: 1,
                call: normalised_call("acme", "c1", 1),
                requested_at: 0,
                trace_id: "t".into(),
            })
        };
        let owner = Resolved { owner_id: Some("42") };
        let cases = [
            (include_str!("../../../contracts/hubspot.toml"), Crm::Hubspot, "hubspot_owner_id", serde_json::json!("42")),
            (include_str!("../../../contracts/salesforce.toml"), Crm::Salesforce, "OwnerId", serde_json::json!("42")),
            (include_str!("../../../contracts/zoho.toml"), Crm::Zoho, "Owner", serde_json::json!({"id": "42"})),
            (include_str!("../../../contracts/pipedrive.toml"), Crm::Pipedrive, "owner_id", serde_json::json!(42)),
        ];
        for (text, crm, field, want) in cases {
            let c = Contract::parse(text).unwrap();
            assert_eq!(c.owner_field(), Some(field));
            assert_eq!(c.values_with(&req(crm), WriteKind::Create, &owner).get(field), Some(&want), "{crm:?}");
            assert!(!c.values_with(&req(crm), WriteKind::Update, &owner).contains_key(field), "{crm:?}: people's reassignments stand");
            assert!(!c.values(&req(crm), WriteKind::Create).contains_key(field), "{crm:?}: no owner resolved, none sent");
        }
    }

    #[test]
    fn the_other_contracts_in_the_repo_load_and_type_their_values() {
        use crm_common::events::{fixtures::normalised_call, Crm, CrmWriteRequest};
        let req = |crm: Crm| {
            WriteRequest::Call(CrmWriteRequest {
                tenant_id: "acme".into(),
                call_id: "c1".into(),
                crm,
                idempotency_key: format!("acme:c1:{}", crm.as_str()),
                version: 2,
                call: normalised_call("acme", "c1", 2),
                requested_at: 0,
                trace_id: "t".into(),
            })
        };
        let sf = Contract::parse(include_str!("../../../contracts/salesforce.toml")).unwrap();
        let v = sf.values(&req(Crm::Salesforce), WriteKind::Create);
        assert_eq!(v["CallDurationInSeconds"], serde_json::json!(60), "a number where Salesforce wants one");
        assert_eq!(v["TaskSubtype"], "Call");
        assert!(!sf.values(&req(Crm::Salesforce), WriteKind::Update).contains_key("TaskSubtype"), "create-only");
        let zoho = Contract::parse(include_str!("../../../contracts/zoho.toml")).unwrap();
        assert_eq!(zoho.values(&req(Crm::Zoho), WriteKind::Create)["Call_Duration"], "01:00");
        let pd = Contract::parse(include_str!("../../../contracts/pipedrive.toml")).unwrap();
        let v = pd.values(&req(Crm::Pipedrive), WriteKind::Create);
        assert_eq!(v["done"], serde_json::json!(true));
        assert_eq!(
            v["note"], "Logged by crm-sync from pbx (call c1)\n\ncrm-sync-key:acme:c1:pipedrive",
            "the source, then the key, ride in the note"
        );
        assert_eq!(pd.key_in("<p>called back</p>\n\ncrm-sync-key:acme:c1:pipedrive"), Some("acme:c1:pipedrive"));
        assert_eq!(pd.key_in("<p>crm-sync-key:acme:c1:pipedrive</p>"), Some("acme:c1:pipedrive"));
        assert_eq!(pd.key_in("no key"), None);
        assert!(!pd.values(&req(Crm::Pipedrive), WriteKind::Update).contains_key("note"), "people may edit the note");
    }

    #[test]
    fn the_hubspot_email_and_meeting_contracts_load_and_map_their_kind() {
        use crm_common::events::{fixtures, Crm, MeetingStatus};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
        let all = Contracts::load(&dir, "hubspot").unwrap();
        assert_eq!(all.kinds().collect::<Vec<_>>(), [ActivityKind::Call, ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead]);
        let email = WriteRequest::try_from(fixtures::email_request("acme", "m1", Crm::Hubspot)).unwrap();
        let v = all.get(ActivityKind::Email).unwrap().values(&email, WriteKind::Create);
        assert_eq!(v["crm_sync_key"], "acme:email:m1@mail.acme.example:hubspot");
        assert_eq!(v["hs_email_direction"], "EMAIL", "a sent email is EMAIL at HubSpot");
        assert_eq!(v["hs_timestamp"], "2026-01-01T00:00:00.000Z");
        let headers: Value = serde_json::from_str(v["hs_email_headers"].as_str().unwrap()).unwrap();
        assert_eq!(headers["from"], serde_json::json!({"email": "rep@acme.example", "firstName": "Rep", "lastName": "One"}));
        assert_eq!(headers["to"][0], serde_json::json!({"email": "jane.doe@customer.example", "firstName": "Jane", "lastName": "Doe"}));
        assert_eq!(headers["cc"][0], serde_json::json!({"email": "ops@customer.example"}));
        assert!(
            !all.get(ActivityKind::Email).unwrap().values(&email, WriteKind::Update).contains_key("hs_email_subject"),
            "people edit subjects"
        );

        let mut m = fixtures::meeting_request("acme", "ev1", Crm::Hubspot);
        let meetings = all.get(ActivityKind::Meeting).unwrap();
        let cancelled = WriteRequest::try_from(m.clone()).unwrap();
        assert_eq!(meetings.values(&cancelled, WriteKind::Update)["hs_meeting_outcome"], "CANCELED");
        m.meeting.as_mut().unwrap().status = MeetingStatus::Confirmed;
        let on = WriteRequest::try_from(m).unwrap();
        assert_eq!(meetings.values(&on, WriteKind::Create)["hs_meeting_outcome"], "SCHEDULED");
        assert!(!meetings.values(&on, WriteKind::Update).contains_key("hs_meeting_outcome"), "a person's COMPLETED or NO_SHOW stands");
        assert_eq!(meetings.values(&on, WriteKind::Update)["hs_meeting_end_time"], "2026-01-01T00:30:00.000Z");
        assert!(!meetings.owned_values(&on).contains_key("hs_meeting_title"));
    }

    /// The lead contracts: a person's fields from a lead, a placeholder where Salesforce
    /// requires a value the lead lacks, Lead-only fields marked, the CRM's fields not
    /// written, and a contract whose key field is not the email refused.
    #[test]
    fn the_lead_contracts_map_a_lead_to_a_persons_fields() {
        use crm_common::events::{fixtures, Crm};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
        let lead = |crm: Crm, f: fn(&mut crm_common::events::NormalisedLead)| {
            let mut r = fixtures::lead_request("acme", "l1", crm);
            f(r.lead.as_mut().unwrap());
            WriteRequest::try_from(r).unwrap()
        };
        let hs = Contracts::load(&dir, "hubspot").unwrap().get(ActivityKind::Lead).unwrap().clone();
        let v = hs.values(&lead(Crm::Hubspot, |_| {}), WriteKind::Create);
        assert_eq!(
            (v["email"].as_str(), v["firstname"].as_str(), v["country"].as_str()),
            (Some("jane.doe@customer.example"), Some("Jane"), Some("US"))
        );
        assert_eq!(v["phone"], "+14155552671");
        assert!(!v.contains_key("lifecyclestage") && !v.contains_key("hubspot_owner_id"), "the CRM's: {v:?}");
        let sf = Contracts::load(&dir, "salesforce").unwrap().get(ActivityKind::Lead).unwrap().clone();
        let v = sf.values(
            &lead(Crm::Salesforce, |l| {
                l.last_name = None;
                l.full_name = Some("Jane Q. Public".into());
                l.company = None;
            }),
            WriteKind::Create,
        );
        assert_eq!((v["LastName"].as_str(), v["Company"].as_str()), (Some("Public"), Some(crate::mapping::NOT_PROVIDED)));
        let v = sf.values(&lead(Crm::Salesforce, |l| (l.last_name, l.full_name) = (None, None)), WriteKind::Create);
        assert_eq!(v["LastName"], crate::mapping::NOT_PROVIDED);
        assert_eq!(sf.fields["Company"].only_on.as_deref(), Some("lead"));
        let e = Contract::parse("crm='x'\nkind='lead'\nobject='o'\nkey_field='k'\n[fields.k]\nsource='phone'\nownership='fill_if_empty'\n")
            .unwrap_err();
        assert!(e.to_string().contains("the person's email field"), "{e}");
        let e =
            hs.overridden(&[("email".to_string(), crm_common::tenants::FieldOverride::Ownership(Ownership::ReadOnly))].into()).unwrap_err();
        assert!(e.contains("holds the person's email"), "{e}");
    }

    /// Every CRM's email and meeting contracts load, and give each CRM what it takes.
    #[test]
    fn every_crms_email_and_meeting_contracts_map_their_kind() {
        use crm_common::events::{fixtures, Crm, MeetingStatus};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
        for crm in [Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive] {
            let all = Contracts::load(&dir, crm.as_str()).unwrap();
            let leads = usize::from(crm_common::tenants::LEAD_CRMS.contains(&crm));
            assert_eq!(all.kinds().count(), 3 + leads, "{}: calls, emails and meetings, and leads where it writes them", crm.as_str());
        }
        let email = |crm: Crm| WriteRequest::try_from(fixtures::email_request("acme", "m1", crm)).unwrap();
        let meeting = |crm: Crm, status: MeetingStatus| {
            let mut m = fixtures::meeting_request("acme", "ev1", crm);
            m.meeting.as_mut().unwrap().status = status;
            WriteRequest::try_from(m).unwrap()
        };
        let of = |crm: Crm, kind: ActivityKind| Contracts::load(&dir, crm.as_str()).unwrap().get(kind).unwrap().clone();

        // Zoho: associate_email's fields, the Message-ID as its header writes it.
        let z = of(Crm::Zoho, ActivityKind::Email).values(&email(Crm::Zoho), WriteKind::Create);
        assert_eq!(z["original_message_id"], "<m1@mail.acme.example>");
        assert_eq!((z["sent"].clone(), z["date_time"].clone()), (Value::Bool(true), Value::from("2026-01-01T00:00:00+00:00")));
        assert_eq!(z["subject"], "Renewal");
        let zm = of(Crm::Zoho, ActivityKind::Meeting);
        let on = zm.values(&meeting(Crm::Zoho, MeetingStatus::Confirmed), WriteKind::Create);
        assert_eq!(
            (on["Start_DateTime"].as_str(), on["End_DateTime"].as_str()),
            (Some("2026-01-01T00:00:00+00:00"), Some("2026-01-01T00:30:00+00:00"))
        );
        assert!(on["Crm_Sync_Key"].as_str().is_some_and(|k| k.starts_with("acme:meeting:")));
        let off = zm.values(&meeting(Crm::Zoho, MeetingStatus::Cancelled), WriteKind::Update);
        assert!(off["Event_Title"].as_str().is_some_and(|t| t.starts_with("Cancelled: ")), "{off:?}");

        // Salesforce: an email is a completed Task of subtype Email.
        let sf = of(Crm::Salesforce, ActivityKind::Email).values(&email(Crm::Salesforce), WriteKind::Create);
        assert_eq!(
            (sf["TaskSubtype"].as_str(), sf["Status"].as_str(), sf["Subject"].as_str()),
            (Some("Email"), Some("Completed"), Some("Email: Renewal"))
        );
        assert!(sf["Description"].as_str().is_some_and(|d| d.starts_with("From: Rep One <rep@acme.example>\nTo: ")), "{sf:?}");

        // Pipedrive: a done email activity, the key after the marker; a meeting's location as
        // v2's address object.
        let pd = of(Crm::Pipedrive, ActivityKind::Email).values(&email(Crm::Pipedrive), WriteKind::Create);
        assert_eq!((pd["type"].as_str(), pd["done"].clone()), (Some("email"), Value::Bool(true)));
        assert!(pd["note"].as_str().is_some_and(|n| n.ends_with("crm-sync-key:acme:email:m1@mail.acme.example:pipedrive")), "{pd:?}");
        let pm = of(Crm::Pipedrive, ActivityKind::Meeting).values(&meeting(Crm::Pipedrive, MeetingStatus::Confirmed), WriteKind::Create);
        assert!(pm["location"]["value"].as_str().is_some_and(|l| !l.is_empty()), "{pm:?}");
    }

    #[test]
    fn a_contract_names_only_its_kinds_sources() {
        let e = Contract::parse("crm='x'\nkind='email'\nobject='o'\nkey_field='k'\n[fields.k]\nsource='idempotency_key'\nownership='owned'\n[fields.d]\nsource='duration_s'\nownership='owned'\n").unwrap_err();
        assert!(e.to_string().contains("unknown source \"duration_s\" for a email"), "{e}");
        let e = Contract::parse("crm='x'\nkind='fax'\nobject='o'\nkey_field='k'\n").unwrap_err();
        assert!(e.to_string().contains("unknown activity kind 'fax'"), "{e}");
    }

    #[test]
    fn a_request_whose_kind_and_body_disagree_is_refused() {
        use crm_common::events::{fixtures, Crm};
        let mut r = fixtures::email_request("acme", "m1", Crm::Hubspot);
        r.email = None;
        assert!(WriteRequest::try_from(r).unwrap_err().why.contains("exactly its own body"));
        let mut r = fixtures::email_request("acme", "m1", Crm::Hubspot);
        r.idempotency_key = "acme:m1:hubspot".into();
        assert!(WriteRequest::try_from(r).unwrap_err().why.contains("is not the key its parts make"));
    }

    #[test]
    fn mistakes_are_named() {
        let e = Contract::parse("crm='x'\nobject='o'\nkey_field='k'\n[fields.k]\nsource='idempotency_key'\nownership='owned'\n[fields.a]\nsource='nope'\nownership='owned'\n").unwrap_err();
        assert!(e.to_string().contains("unknown source \"nope\""), "{e}");
        let e = Contract::parse("crm='x'\nobject='o'\nkey_field='k'\n[fields.a]\nsource='notes'\nownership='owned'\n").unwrap_err();
        assert!(e.to_string().contains("key_field k"), "{e}");
        let e = Contract::parse("crm='x'\nobject='o'\nkey_field='k'\n[fields.k]\nsource='idempotency_key'\nownership='owned'\n[fields.t]\nsource='title'\nownership='fill_if_empty'\nrestorable=true\n").unwrap_err();
        assert!(e.to_string().contains("restorable"), "{e}");
    }
}
