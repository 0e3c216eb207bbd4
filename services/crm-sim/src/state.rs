//! Everything the simulated CRMs hold, per account (HubSpot portal, Salesforce org, Zoho org,
//! Pipedrive company): records, their field schema, limits and usage, revoked permissions,
//! injected faults and request counters. One mutex guards it all: requests hold it for
//! microseconds and never across an await.

use crate::clock::Clock;
use crate::faults::FaultRule;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crm {
    Hubspot,
    Salesforce,
    Zoho,
    Pipedrive,
}

impl Crm {
    pub fn as_str(self) -> &'static str {
        match self {
            Crm::Hubspot => "hubspot",
            Crm::Salesforce => "salesforce",
            Crm::Zoho => "zoho",
            Crm::Pipedrive => "pipedrive",
        }
    }

    pub fn parse(s: &str) -> Option<Crm> {
        serde_json::from_value(Value::String(s.to_ascii_lowercase())).ok()
    }
}

/// One record (a contact or a call) as the CRM stores it: native field names, values as
/// written (phone numbers exactly as typed).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: String,
    pub fields: Map<String, Value>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Soft-deleted (archived, recycle bin) at this time.
    pub deleted_ms: Option<i64>,
    /// Search indexes see the record (as of its last write) from this time.
    pub indexed_at_ms: i64,
    /// Ids of associated contacts (calls) or calls (contacts).
    pub associations: BTreeSet<String>,
    /// For a contact merged into another: the survivor's id.
    pub merged_into: Option<String>,
}

impl Record {
    pub fn live(&self) -> bool {
        self.deleted_ms.is_none()
    }

    /// Sets fields; a null value removes the field (Salesforce's and a UI edit's semantics).
    pub fn apply(&mut self, fields: Map<String, Value>) {
        for (k, v) in fields {
            if v.is_null() {
                self.fields.remove(&k);
            } else {
                self.fields.insert(k, v);
            }
        }
    }

    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

/// Records of one object type in creation order, with an id index and value indexes on the
/// fields records are looked up by (unique and external-id fields, the idempotency key), so
/// upserts stay O(1) when a benchmark has written a hundred thousand calls.
#[derive(Debug, Default, Clone)]
pub struct Table {
    rows: Vec<Record>,
    index: HashMap<String, usize>,
    /// field → lower-cased value → row positions. Entries can go stale when a value changes;
    /// lookups check the record's current value, and `reindex` adds the new one.
    values: HashMap<String, HashMap<String, Vec<usize>>>,
}

fn index_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_lowercase()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Table {
    pub fn insert(&mut self, r: Record) {
        let pos = self.rows.len();
        self.index.insert(r.id.clone(), pos);
        self.rows.push(r);
        self.index_row(pos);
    }
    fn index_row(&mut self, pos: usize) {
        let r = &self.rows[pos];
        for (field, map) in self.values.iter_mut() {
            if let Some(k) = r.fields.get(field).and_then(index_key) {
                let e = map.entry(k).or_default();
                if !e.contains(&pos) {
                    e.push(pos);
                }
            }
        }
    }
    /// Looks records up by `field` from now on.
    pub fn index_field(&mut self, field: &str) {
        if self.values.contains_key(field) {
            return;
        }
        self.values.insert(field.to_string(), HashMap::new());
        for pos in 0..self.rows.len() {
            self.index_row(pos);
        }
    }
    /// After a record's fields changed: index its new values.
    pub fn reindex(&mut self, id: &str) {
        if let Some(&pos) = self.index.get(id) {
            self.index_row(pos);
        }
    }
    /// Records whose `field` equals `value`, ignoring case (deleted ones included).
    pub fn find_by(&self, field: &str, value: &str) -> Vec<&Record> {
        let want = value.to_lowercase();
        let matches = |r: &&Record| r.fields.get(field).and_then(index_key).is_some_and(|k| k == want);
        match self.values.get(field) {
            Some(map) => map.get(&want).into_iter().flatten().map(|&p| &self.rows[p]).filter(matches).collect(),
            None => self.rows.iter().filter(matches).collect(),
        }
    }
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.index.get(id).map(|&i| &self.rows[i])
    }
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Record> {
        self.index.get(id).map(|&i| &mut self.rows[i])
    }
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.rows.iter()
    }
    pub fn live(&self) -> impl Iterator<Item = &Record> {
        self.rows.iter().filter(|r| r.live())
    }
    /// Permanent deletion (GDPR purge, emptied recycle bin).
    pub fn purge(&mut self, id: &str) -> bool {
        let Some(i) = self.index.remove(id) else { return false };
        self.rows.remove(i);
        for (j, r) in self.rows.iter().enumerate().skip(i) {
            self.index.insert(r.id.clone(), j);
        }
        for map in self.values.values_mut() {
            map.clear();
        }
        for pos in 0..self.rows.len() {
            self.index_row(pos);
        }
        true
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    #[default]
    Text,
    Phone,
    Number,
    Bool,
    Date,
    DateTime,
    Picklist,
    Lookup,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    #[serde(rename = "type", default)]
    pub kind: FieldType,
    /// The CRM rejects a second record with the same value.
    #[serde(default)]
    pub unique: bool,
    /// Salesforce External ID: usable as an upsert key.
    #[serde(default)]
    pub external_id: bool,
    #[serde(default)]
    pub custom: bool,
    /// Computed by the CRM; writes are rejected.
    #[serde(default)]
    pub read_only: bool,
    /// Settable on create only (Salesforce TaskSubtype).
    #[serde(default)]
    pub create_only: bool,
    #[serde(default)]
    pub required: bool,
    /// Allowed values of a picklist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl FieldDef {
    pub fn of(kind: FieldType) -> Self {
        FieldDef {
            kind,
            unique: false,
            external_id: false,
            custom: false,
            read_only: false,
            create_only: false,
            required: false,
            options: vec![],
        }
    }
    pub fn read_only(kind: FieldType) -> Self {
        FieldDef { read_only: true, ..Self::of(kind) }
    }
    pub fn required(kind: FieldType) -> Self {
        FieldDef { required: true, ..Self::of(kind) }
    }
    pub fn picklist(options: &[&str]) -> Self {
        FieldDef { options: options.iter().map(|s| s.to_string()).collect(), ..Self::of(FieldType::Picklist) }
    }
}

pub type Schema = BTreeMap<String, BTreeMap<String, FieldDef>>;

/// Where the account's calls carry crm-sync's idempotency key, so counters can report how many
/// records each key produced. `marker` extracts the key from free text (Pipedrive's note).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyField {
    pub object: String,
    pub field: String,
    #[serde(default)]
    pub marker: Option<String>,
}

impl KeyField {
    pub fn extract<'a>(&self, r: &'a Record) -> Option<&'a str> {
        let v = r.str_field(&self.field)?;
        match &self.marker {
            None => Some(v),
            Some(m) => {
                let start = v.find(m.as_str())? + m.len();
                let rest = &v[start..];
                let end = rest.find(|c: char| c.is_whitespace() || "<\"]),;".contains(c)).unwrap_or(rest.len());
                (end > 0).then(|| &rest[..end])
            }
        }
    }
}

pub struct Account {
    pub crm: Crm,
    pub id: String,
    pub plan: String,
    /// Limits in effect, from the plan and any per-account overrides.
    pub limits: crate::limits::Limits,
    pub usage: crate::limits::Usage,
    pub objects: BTreeMap<String, Table>,
    pub schema: Schema,
    pub revoked: BTreeSet<String>,
    pub faults: Vec<FaultRule>,
    /// endpoint label → status → count
    pub counters: BTreeMap<String, BTreeMap<u16, u64>>,
    pub rng: StdRng,
    /// Start times (sim ms) of requests being handled, by request number.
    pub in_flight: BTreeMap<u64, i64>,
    /// Where crm-sync's key lives, per object that carries one (calls; emails and meetings).
    pub key_fields: Vec<KeyField>,
    pub search_lag_ms: i64,
    /// HubSpot: whether a unique property on an activity object (calls, emails, meetings)
    /// refuses duplicates. Unverified and doubtful, so off unless an account turns it on.
    pub enforce_activity_unique: bool,
    /// HubSpot: whether properties can be created on activity objects through the API.
    /// Unverified (the create operation lists no schema scope for them), so refused unless
    /// an account allows it.
    pub activity_property_create: bool,
    /// HubSpot: property groups made through the API, per object (besides each object's
    /// default `<object>information`).
    pub property_groups: BTreeMap<String, BTreeSet<String>>,
    /// Zoho: whether "Do not allow duplicate values" is accepted on Calls, Tasks and Events.
    /// Unverified (CRM-APIS-ACTIVITIES §6.3), so refused unless an account accepts it.
    pub activity_unique_fields: bool,
    /// Salesforce: setup the API made (`salesforce::setup`): fields made through the Tooling
    /// API that no one has field-level access to yet, permission sets and their grants.
    pub sf_setup: crate::salesforce::setup::Setup,
    /// Zoho: the org's lead assignment rules, rule id → the user it gives every lead to (an
    /// id, or an address resolved when a lead is inserted with `lar_id`).
    pub zoho_lead_rules: BTreeMap<String, String>,
    pub tz_offset_min: i32,
    pub owner_id: String,
    pub seq: u64,
    /// Typed associations between records where the CRM keeps them apart from fields
    /// (HubSpot's v4 associations: a contact's companies and deals, an activity's company
    /// and deal), each way it is stored.
    pub links: BTreeSet<Link>,
}

/// One association: `from` and `to` as (table, id), with HubSpot's association type id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Link {
    pub from: (String, String),
    pub to: (String, String),
    pub type_id: i64,
}

impl Account {
    /// The records of `to_table` linked from (`from_table`, `from_id`), each with its
    /// association type ids, in id order.
    pub fn linked(&self, from_table: &str, from_id: &str, to_table: &str) -> BTreeMap<String, Vec<i64>> {
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for l in self.links.iter().filter(|l| l.from.0 == from_table && l.from.1 == from_id && l.to.0 == to_table) {
            out.entry(l.to.1.clone()).or_default().push(l.type_id);
        }
        out
    }
}

impl Account {
    pub fn table(&mut self, object: &str) -> &mut Table {
        self.objects.entry(object.to_string()).or_default()
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn fields(&self, object: &str) -> Option<&BTreeMap<String, FieldDef>> {
        self.schema.get(object)
    }

    /// An object's fields, empty for an unknown object; borrowed, not copied, on the hot path.
    pub fn schema_of(&self, object: &str) -> &BTreeMap<String, FieldDef> {
        static EMPTY: BTreeMap<String, FieldDef> = BTreeMap::new();
        self.schema.get(object).unwrap_or(&EMPTY)
    }

    pub fn count(&mut self, endpoint: &str, status: u16) {
        *self.counters.entry(endpoint.to_string()).or_default().entry(status).or_default() += 1;
    }

    /// Records per idempotency key: (all ever created and not purged, live).
    pub fn keys(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for kf in &self.key_fields {
            for r in self.objects.get(&kf.object).into_iter().flat_map(|t| t.iter()) {
                if let Some(k) = kf.extract(r) {
                    let e = out.entry(k.to_string()).or_default();
                    e.0 += 1;
                    if r.live() {
                        e.1 += 1;
                    }
                }
            }
        }
        out
    }

    /// A live record that holds `value` in unique field `field`, other than `except`.
    pub fn unique_holder(&self, object: &str, field: &str, value: &Value, except: Option<&str>) -> Option<String> {
        self.unique_holder_as(object, field, value, except, false)
    }

    /// The same, text compared without case where `fold_case` (an address: Zoho's unique
    /// Email).
    pub fn unique_holder_as(&self, object: &str, field: &str, value: &Value, except: Option<&str>, fold_case: bool) -> Option<String> {
        let key = index_key(value).filter(|k| !k.is_empty())?;
        let same = |v: Option<&Value>| if fold_case { v.and_then(index_key).as_deref() == Some(key.as_str()) } else { v == Some(value) };
        self.objects
            .get(object)?
            .find_by(field, &key)
            .into_iter()
            .find(|r| r.live() && Some(r.id.as_str()) != except && same(r.fields.get(field)))
            .map(|r| r.id.clone())
    }

    /// Indexes every unique or external-id field and the idempotency key field.
    pub fn ensure_indexes(&mut self) {
        let mut wanted: Vec<(String, String)> = self
            .schema
            .iter()
            .flat_map(|(o, fields)| fields.iter().filter(|(_, d)| d.unique || d.external_id).map(move |(f, _)| (o.clone(), f.clone())))
            .collect();
        for k in &self.key_fields {
            wanted.push((k.object.clone(), k.field.clone()));
        }
        for (o, f) in wanted {
            self.table(&o).index_field(&f);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// HubSpot private-app token, Pipedrive API token: never expires.
    Static,
    /// OAuth access token: expires, refreshed with a refresh token.
    Oauth,
}

#[derive(Debug, Clone, Serialize)]
pub struct Token {
    pub crm: Crm,
    pub account: String,
    pub kind: TokenKind,
    pub app: String,
    pub issued_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    pub refresh_token: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshToken {
    pub crm: Crm,
    pub account: String,
    pub client_id: String,
    pub client_secret: String,
    pub app: String,
    pub revoked: bool,
    pub access_ttl_s: i64,
    /// When access tokens were minted from it (Zoho caps minting per 10 minutes).
    #[serde(skip)]
    pub minted: VecDeque<i64>,
    /// Each refresh answers a new refresh token and invalidates this one (Salesforce with
    /// rotation on; Pipedrive, unverified, so the harsher case).
    #[serde(default)]
    pub rotate: bool,
}

#[derive(Default)]
pub struct World {
    pub accounts: BTreeMap<(Crm, String), Account>,
    pub tokens: HashMap<String, Token>,
    pub refresh_tokens: HashMap<String, RefreshToken>,
    /// Requests whose token matched no account, by crm and status.
    pub unattributed: BTreeMap<String, BTreeMap<u16, u64>>,
    pub request_seq: u64,
    /// Faults on each CRM's OAuth token endpoint (admin `POST /admin/token-faults/{crm}`).
    pub token_faults: BTreeMap<Crm, Vec<crate::faults::FaultRule>>,
    /// Answers of the token endpoints, by CRM and status.
    pub token_answers: BTreeMap<Crm, BTreeMap<u16, u64>>,
    pub token_rng: Option<rand::rngs::StdRng>,
}

impl World {
    pub fn account(&mut self, crm: Crm, id: &str) -> Option<&mut Account> {
        self.accounts.get_mut(&(crm, id.to_string()))
    }
}

/// The identity a request authenticated as; handlers find their account from it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub crm: Crm,
    pub account: String,
    pub token: String,
    pub app: String,
    pub oauth: bool,
    pub expires_at_ms: Option<i64>,
}

pub struct Sim {
    pub world: Mutex<World>,
    pub clock: Clock,
    /// Where clients reach this process ("http://127.0.0.1:8080"); token responses point
    /// clients at it (Salesforce instance_url, Zoho and Pipedrive api_domain).
    pub public_url: RwLock<String>,
}

pub type SharedSim = Arc<Sim>;

impl Sim {
    pub fn new() -> SharedSim {
        Arc::new(Sim { world: Mutex::new(World::default()), clock: Clock::default(), public_url: RwLock::new(String::new()) })
    }

    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn url(&self, crm: Crm) -> String {
        format!("{}/{}", self.public_url.read().unwrap(), crm.as_str())
    }

    /// Runs `f` on the caller's account. The account exists: the gate checked the token.
    pub fn with<R>(&self, caller: &Caller, f: impl FnOnce(&mut Account, i64) -> R) -> R {
        let now = self.clock.now_ms();
        let mut w = self.lock();
        let acct = w.account(caller.crm, &caller.account).expect("gate checked the account");
        f(acct, now)
    }
}

pub fn new_account(
    crm: Crm,
    id: &str,
    plan: &str,
    limits: crate::limits::Limits,
    usage: crate::limits::Usage,
    schema: Schema,
    seed: u64,
) -> Account {
    Account {
        crm,
        id: id.to_string(),
        plan: plan.to_string(),
        limits,
        usage,
        objects: BTreeMap::new(),
        schema,
        revoked: BTreeSet::new(),
        faults: vec![],
        counters: BTreeMap::new(),
        rng: StdRng::seed_from_u64(seed),
        in_flight: BTreeMap::new(),
        key_fields: vec![],
        search_lag_ms: 0,
        enforce_activity_unique: false,
        activity_property_create: false,
        property_groups: BTreeMap::new(),
        activity_unique_fields: false,
        sf_setup: Default::default(),
        zoho_lead_rules: Default::default(),
        tz_offset_min: 0,
        owner_id: String::new(),
        seq: 0,
        links: BTreeSet::new(),
    }
}

/// Digits only: how the CRMs that ignore punctuation compare phone numbers.
pub fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_marker_extracts_from_free_text() {
        let kf = KeyField { object: "activities".into(), field: "note".into(), marker: Some("crm-sync-key:".into()) };
        let mut fields = Map::new();
        fields.insert("note".into(), Value::String("<p>Call notes</p><p>crm-sync-key:acme/c1/pipedrive</p>".into()));
        let r = Record {
            id: "1".into(),
            fields,
            created_ms: 0,
            updated_ms: 0,
            deleted_ms: None,
            indexed_at_ms: 0,
            associations: Default::default(),
            merged_into: None,
        };
        assert_eq!(kf.extract(&r), Some("acme/c1/pipedrive"));
    }

    #[test]
    fn value_index_follows_changes() {
        let rec = |id: &str, k: &str| {
            let mut fields = Map::new();
            fields.insert("key".into(), Value::String(k.into()));
            Record {
                id: id.into(),
                fields,
                created_ms: 0,
                updated_ms: 0,
                deleted_ms: None,
                indexed_at_ms: 0,
                associations: Default::default(),
                merged_into: None,
            }
        };
        let mut t = Table::default();
        t.insert(rec("1", "A"));
        t.index_field("key");
        t.insert(rec("2", "b"));
        assert_eq!(t.find_by("key", "a")[0].id, "1", "case-insensitive, indexed after the fact");
        t.get_mut("1").unwrap().fields.insert("key".into(), Value::String("c".into()));
        t.reindex("1");
        assert!(t.find_by("key", "a").is_empty(), "the stale entry is filtered out");
        assert_eq!(t.find_by("key", "C")[0].id, "1");
        assert_eq!(t.find_by("other", "x").len(), 0, "unindexed fields scan");
    }

    #[test]
    fn purge_keeps_index_consistent() {
        let mut t = Table::default();
        for i in 0..4 {
            t.insert(Record {
                id: i.to_string(),
                fields: Map::new(),
                created_ms: 0,
                updated_ms: 0,
                deleted_ms: None,
                indexed_at_ms: 0,
                associations: Default::default(),
                merged_into: None,
            });
        }
        assert!(t.purge("1"));
        assert_eq!(t.get("3").unwrap().id, "3");
        assert_eq!(t.len(), 3);
    }
}
