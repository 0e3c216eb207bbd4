//! What support looks activities up by, besides their id: a customer's number or address,
//! or the agent (`crm-sync trace --phone/--email/--agent`).
//!
//! The normaliser names each activity's lookups by keyed hashes ([`KeyNames`] with
//! [`Purpose::AuditLookups`]: a salt per tenant, keyed by the deployment key) and puts them
//! in its audit record's [`ATTRIBUTE`] attribute, with the activity's own time in
//! [`ACTIVITY_AT`]; the audit-sink stores them in `audit_lookup`; `crm-sync trace` names what
//! it is asked for the same way. So the audit topic and store hold no number or address in
//! clear, and a lookup is an index probe however large the store.

use crate::key_names::{KeyNames, Purpose};

/// The audit attribute with the activity's lookup names, space-separated.
pub const ATTRIBUTE: &str = "lookup";
/// The audit attribute with the activity's own time (ms since the epoch).
pub const ACTIVITY_AT: &str = "activity_at";

/// One thing an activity can be looked up by. Each is named with its kind, so a number, an
/// address and an agent never share a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A customer's number, in E.164.
    Phone(&'a str),
    /// A participant's canonical address.
    Email(&'a str),
    /// The agent (the call's agent, the mailbox or calendar owner): their id at the source,
    /// or their address.
    Agent(&'a str),
}

impl Lookup<'_> {
    /// What is named: the kind, then the value (`phone:+1415…`, `agent:ann@example.com`).
    fn name_with(&self, names: &KeyNames, tenant: &str) -> String {
        match self {
            Lookup::Phone(n) => names.name_joined(tenant, &["phone:", n]),
            Lookup::Email(a) => names.name_joined(tenant, &["email:", a]),
            // An address is compared as its canonical form; an id exactly as the source sent it.
            Lookup::Agent(a) => {
                let a = a.trim();
                // Only what could be an address is canonicalised (ids are most agents).
                match a.contains('@').then(|| crate::email::canonical(a)) {
                    Some(Ok(c)) => names.name_joined(tenant, &["agent:", &c]),
                    _ => names.name_joined(tenant, &["agent:", a]),
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct Lookups {
    names: KeyNames,
}

impl Lookups {
    pub fn new(deployment_key: &[u8]) -> Lookups {
        Lookups { names: KeyNames::new(deployment_key, Purpose::AuditLookups) }
    }

    /// Keyed by the deployment key, as every stage and `crm-sync trace` find it.
    pub fn from_env() -> Lookups {
        Lookups { names: KeyNames::from_env(Purpose::AuditLookups) }
    }

    /// The name of one lookup of `tenant`.
    pub fn name(&self, tenant: &str, lookup: Lookup) -> String {
        lookup.name_with(&self.names, tenant)
    }

    /// The [`ATTRIBUTE`] value for an activity: its lookups' names, sorted, each once; empty
    /// lookups (no agent address, say) are left out.
    pub fn attribute<'a>(&self, tenant: &str, lookups: impl IntoIterator<Item = Lookup<'a>>) -> String {
        let mut names: Vec<String> = lookups
            .into_iter()
            .filter(|l| !matches!(l, Lookup::Phone(v) | Lookup::Email(v) | Lookup::Agent(v) if v.trim().is_empty()))
            .map(|l| self.name(tenant, l))
            .collect();
        names.sort();
        names.dedup();
        names.join(" ")
    }
}

/// The names in an [`ATTRIBUTE`] value; anything that is not a name (the attribute is
/// input to the audit-sink, from a topic anyone may produce to) is skipped.
pub fn names_in(attribute: &str) -> impl Iterator<Item = &str> {
    attribute.split_ascii_whitespace().filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_names_its_own_value_and_agents_match_by_canonical_address() {
        let l = Lookups::new(b"k");
        let phone = l.name("acme", Lookup::Phone("+14155550199"));
        assert_ne!(phone, l.name("acme", Lookup::Agent("+14155550199")), "a number and an agent id never share a name");
        assert_eq!(l.name("acme", Lookup::Agent("Ann@Example.COM ")), l.name("acme", Lookup::Agent("ann@example.com")));
        assert_ne!(l.name("acme", Lookup::Agent("ag-1")), l.name("acme", Lookup::Agent("AG-1")), "ids are exact");
        let attr =
            l.attribute("acme", [Lookup::Phone("+14155550199"), Lookup::Agent(""), Lookup::Phone("+14155550199"), Lookup::Agent("ag-1")]);
        let names: Vec<&str> = names_in(&attr).collect();
        assert_eq!(names.len(), 2, "{attr}");
        assert!(names.contains(&phone.as_str()));
        assert!(!attr.contains("415"), "no number in clear: {attr}");
        assert_eq!(names_in("zz not-a-name 0123456789abcdef0123456789abcdef").count(), 1);
    }

    #[test]
    fn a_lookups_name_is_that_of_its_kind_and_value_joined() {
        // The audit store keeps these names: naming the parts must give the joined text's.
        let keys = KeyNames::new(b"k", Purpose::AuditLookups);
        let l = Lookups { names: keys.clone() };
        assert_eq!(l.name("acme", Lookup::Phone("+14155550199")), keys.name("acme", "phone:+14155550199"));
        assert_eq!(l.name("acme", Lookup::Email("ann@example.com")), keys.name("acme", "email:ann@example.com"));
        assert_eq!(l.name("acme", Lookup::Agent(" Ann@Example.COM")), keys.name("acme", "agent:ann@example.com"));
        assert_eq!(l.name("acme", Lookup::Agent(" ag-1 ")), keys.name("acme", "agent:ag-1"));
        assert_eq!(l.name("acme", Lookup::Agent("not@an address")), keys.name("acme", "agent:not@an address"));
    }
}
