//! Field-ownership contracts (DESIGN §7): one TOML file per CRM in `contracts/`, loaded at
//! start. The writer writes only the fields a contract names as `owned` (always) or
//! `fill_if_empty` (on create); updates touch owned fields only.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    Owned,
    FillIfEmpty,
    ReadOnly,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// A value the writer derives from the call (`mapping::SOURCES`); none for read-only.
    #[serde(default)]
    pub source: Option<String>,
    pub ownership: Ownership,
    /// The reconciler may put an owned field back when someone changed it in the CRM.
    #[serde(default)]
    pub restorable: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub crm: String,
    pub object: String,
    /// Where the CRM record carries the idempotency key.
    pub key_field: String,
    pub fields: BTreeMap<String, FieldRule>,
}

/// Which write a record is getting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Create,
    Update,
}

impl Contract {
    pub fn load(dir: &Path, crm: &str) -> anyhow::Result<Contract> {
        let path = dir.join(format!("{crm}.toml"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read the field contract {}: {e}", path.display()))?;
        let c = Contract::parse(&text).map_err(|e| anyhow::anyhow!("field contract {}: {e}", path.display()))?;
        anyhow::ensure!(c.crm == crm, "field contract {} is for crm = {:?}, not {crm}", path.display(), c.crm);
        Ok(c)
    }

    pub fn parse(text: &str) -> anyhow::Result<Contract> {
        let c: Contract = toml::from_str(text)?;
        for (name, rule) in &c.fields {
            match (&rule.source, rule.ownership) {
                (None, Ownership::Owned | Ownership::FillIfEmpty) => anyhow::bail!("field {name}: a written field needs a source"),
                (Some(s), _) if !crate::mapping::SOURCES.contains(&s.as_str()) => {
                    anyhow::bail!("field {name}: unknown source {s:?} (known: {})", crate::mapping::SOURCES.join(", "))
                }
                _ => {}
            }
            anyhow::ensure!(!rule.restorable || rule.ownership == Ownership::Owned, "field {name}: only owned fields can be restorable");
        }
        let key = c.fields.get(&c.key_field);
        anyhow::ensure!(
            key.is_some_and(|r| r.ownership == Ownership::Owned && r.source.as_deref() == Some("idempotency_key")),
            "key_field {} must be an owned field with source = \"idempotency_key\"",
            c.key_field
        );
        Ok(c)
    }

    /// The (field, source) pairs this kind of write may set.
    pub fn writable(&self, kind: WriteKind) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().filter_map(move |(name, r)| {
            let allowed = match r.ownership {
                Ownership::Owned => true,
                Ownership::FillIfEmpty => kind == WriteKind::Create,
                Ownership::ReadOnly => false,
            };
            allowed.then_some((name.as_str(), r.source.as_deref()?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hubspot_contract_in_the_repo_loads() {
        let c = Contract::parse(include_str!("../../../contracts/hubspot.toml")).unwrap();
        assert_eq!(c.key_field, "crm_sync_key");
        let create: Vec<&str> = c.writable(WriteKind::Create).map(|(f, _)| f).collect();
        let update: Vec<&str> = c.writable(WriteKind::Update).map(|(f, _)| f).collect();
        assert!(create.contains(&"hs_call_title") && !update.contains(&"hs_call_title"), "fill_if_empty: create only");
        assert!(update.contains(&"hs_call_status"));
        assert!(!create.contains(&"hubspot_owner_id"), "read-only is never written");
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
