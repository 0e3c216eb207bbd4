//! Whose record it is: an activity's actor (a call's agent, the mailbox's or calendar's
//! user) resolved to the CRM user who owns the record. The tenant's `owners` map (actor id →
//! CRM user id) wins; else the actor's email is matched to an active CRM user through the
//! CRM's users API, cached per tenant (`WRITER_OWNER_TTL`, misses `WRITER_OWNER_MISS_TTL`);
//! else the tenant's `on_unmapped_actor` decides. The owner is written where the contract
//! has a field with `source = "owner_id"` for that write: by default on create only
//! (`fill_if_empty`), so a person's reassignment in the CRM stands.

use crm_common::events::{Actor, DlqReason};
use crm_common::tenants::{CrmConnection, UnmappedActor};
use crm_connectors::api::Failure;
use std::collections::HashMap;

/// How a record's owner was decided; the write's audit says which (`owner_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The tenant's `owners` map names the actor's CRM user.
    Mapped(String),
    /// An active CRM user has the actor's email.
    ByEmail(String),
    /// No CRM user: written without an owner (the CRM makes the integration's user the
    /// owner), and flagged.
    Unmapped { why: String },
}

impl Owner {
    pub fn id(&self) -> Option<&str> {
        match self {
            Owner::Mapped(id) | Owner::ByEmail(id) => Some(id),
            Owner::Unmapped { .. } => None,
        }
    }

    /// The audit's `owner_from` attribute.
    pub fn from(&self) -> &'static str {
        match self {
            Owner::Mapped(_) => "tenant_map",
            Owner::ByEmail(_) => "email",
            Owner::Unmapped { .. } => "integration_user",
        }
    }
}

/// The actor's email as users are matched by it (trimmed, lower case), if it has one.
pub fn email_of(actor: &Actor) -> Option<String> {
    actor.email.map(|e| e.trim().to_lowercase()).filter(|e| e.contains('@'))
}

/// The owner from the tenant's map alone; None when the actor's email must be looked up.
pub fn mapped(conn: &CrmConnection, actor: &Actor) -> Option<Owner> {
    conn.owners.get(actor.id).map(|id| Owner::Mapped(id.clone()))
}

/// The owner once the actor's email has been looked up (`by_email`: address → CRM user,
/// None for a known miss): the user, or the tenant's choice for an unmapped actor, which
/// is an owner-less write or an ACTOR_UNMAPPED dead letter.
pub fn decide(conn: &CrmConnection, crm: &str, actor: &Actor, by_email: &HashMap<String, Option<String>>) -> Result<Owner, Failure> {
    if let Some(o) = mapped(conn, actor) {
        return Ok(o);
    }
    let email = email_of(actor);
    if let Some(id) = email.as_ref().and_then(|e| by_email.get(e)).and_then(Option::clone) {
        return Ok(Owner::ByEmail(id));
    }
    let why = match &email {
        Some(_) => format!("actor '{}': no active {crm} user has their email, and the tenant's owners map does not name them", actor.id),
        None => format!("actor '{}': the source gave no email, and the tenant's owners map does not name them", actor.id),
    };
    match conn.on_unmapped_actor {
        UnmappedActor::IntegrationUser => Ok(Owner::Unmapped { why }),
        UnmappedActor::DeadLetter => Err(Failure::new(
            DlqReason::ActorUnmapped,
            format!("{why}; held for review (on_unmapped_actor = \"dead_letter\"): add them to crms.{crm}.owners or create the {crm} user, then replay"),
        )),
    }
}

/// The owner when the CRM's users could not be read for a reason that will not pass by
/// itself (a missing scope, a refused request): the actor counts as unmapped, so the
/// tenant's choice holds (an integration-user write that says why, or ACTOR_UNMAPPED), rather
/// than every write of the tenant failing for want of an owner.
pub fn users_unreadable(conn: &CrmConnection, crm: &str, actor: &Actor, why: &str) -> Result<Owner, Failure> {
    if let Some(o) = mapped(conn, actor) {
        return Ok(o);
    }
    let why = format!("actor '{}': the {crm} users could not be read ({why})", actor.id);
    match conn.on_unmapped_actor {
        UnmappedActor::IntegrationUser => Ok(Owner::Unmapped { why }),
        UnmappedActor::DeadLetter => Err(Failure::new(
            DlqReason::ActorUnmapped,
            format!("{why}; held for review (on_unmapped_actor = \"dead_letter\"): grant the users scope or map the actor in crms.{crm}.owners, then replay"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(extra: &str) -> CrmConnection {
        toml::from_str(&format!("plan = 'starter'\ncredentials_secret = 'X'\n{extra}")).unwrap()
    }

    fn actor<'a>(id: &'a str, email: Option<&'a str>) -> Actor<'a> {
        Actor { id, email }
    }

    #[test]
    fn the_tenants_map_wins_over_the_email() {
        let c = conn("[owners]\nagent-7 = '901'\n");
        let found = HashMap::from([("rep@acme.example".to_string(), Some("555".to_string()))]);
        assert_eq!(decide(&c, "hubspot", &actor("agent-7", Some("Rep@Acme.example")), &found).unwrap(), Owner::Mapped("901".into()));
        assert_eq!(decide(&c, "hubspot", &actor("agent-8", Some(" Rep@Acme.example ")), &found).unwrap(), Owner::ByEmail("555".into()));
    }

    #[test]
    fn unreadable_users_leave_the_actor_unmapped_not_the_write_failed() {
        let o = users_unreadable(&conn(""), "pipedrive", &actor("a1", Some("x@acme.example")), "403 missing scope users:read").unwrap();
        assert!(matches!(&o, Owner::Unmapped { why } if why.contains("could not be read") && why.contains("users:read")), "{o:?}");
        let f = users_unreadable(&conn("on_unmapped_actor = 'dead_letter'\n"), "pipedrive", &actor("a1", None), "403").unwrap_err();
        assert_eq!(f.reason, DlqReason::ActorUnmapped);
        let m = users_unreadable(&conn("[owners]\na1 = '7'\n"), "pipedrive", &actor("a1", None), "403").unwrap();
        assert_eq!(m, Owner::Mapped("7".into()), "the map needs no lookup");
    }

    #[test]
    fn an_unmapped_actor_follows_the_tenants_choice() {
        let misses = HashMap::from([("new@acme.example".to_string(), None)]);
        let o = decide(&conn(""), "zoho", &actor("a1", Some("new@acme.example")), &misses).unwrap();
        assert!(matches!(&o, Owner::Unmapped { why } if why.contains("no active zoho user")), "{o:?}");
        assert_eq!(o.id(), None);
        let o = decide(&conn(""), "zoho", &actor("a1", None), &misses).unwrap();
        assert!(matches!(&o, Owner::Unmapped { why } if why.contains("gave no email")), "{o:?}");
        let f = decide(&conn("on_unmapped_actor = 'dead_letter'\n"), "zoho", &actor("a1", Some("new@acme.example")), &misses).unwrap_err();
        assert_eq!(f.reason, DlqReason::ActorUnmapped);
        assert!(!f.maybe_applied && f.detail.contains("crms.zoho.owners"), "{}", f.detail);
    }
}
