//! Every Redis key crm-sync writes, in one place. Each starts with the deployment's prefix
//! (`REDIS_KEY_PREFIX`) and carries the tenant as a hash tag, `{tenant}`, so all of one
//! tenant's keys live in one Redis Cluster slot: the Lua scripts that touch several of them
//! (a claim and its tenant's epoch; a bucket set) stay atomic on a cluster.
//!
//! | key | written by | holds |
//! |---|---|---|
//! | `<p>:{t}:dedup:<call_id>` | deduper | `<version>\|<input>`: the highest version seen and the input that set it, for the dedup window |
//! | `<p>:{t}:claim:<idempotency key>` | writers | the claim: owner, lease, state, record id |
//! | `<p>:{t}:claims-epoch` | writers | since when the store remembers the tenant's claims |
//! | `<p>:{t}:bucket:<crm>:<limit>` | writers, reconciler | a token bucket of the CRM's limit |
//! | `<p>:{t}:bucket:<crm>:blocked` | writers, reconciler | "the CRM said stop until …" |
//! | `<p>:{t}:oauth:<crm>` (+ `:lock`) | writers, reconciler | sealed OAuth tokens; one refresh at a time |
//! | `<p>:{t}:contact:<crm>:<name>` | writers, reconciler | the contact a number or address resolved to; `<name>` is a keyed hash of it (`crm_connectors::contacts::KeyNames`), never the number |
//! | `<p>:{t}:owner:<crm>:<name>`, `<p>:{t}:context:<crm>:<name>` | writers | an actor's CRM user; a contact's company and deals (named the same way) |
//! | `<p>:{t}:reconcile:<crm>` | reconciler | whose turn the next pass is (its own lock) |
//! | `<p>:{t}:claim:<t>:person:<crm>:<digest>` | writers | a lead's person claim: who writes the person now, the record they are (`crm_connectors::person_claims`; the digest is the email's SHA-256, never the address) |
//! | `<p>:{t}:lead-turn:<crm>` | writers | the round-robin count of new people's owners (`leads.owner.round_robin`) |

// The keys made per record (a mark, a claim) are joined rather than `format!`ed: the
// formatting machinery cost more than the rest of building a key.
pub fn dedup(prefix: &str, tenant: &str, call_id: &str) -> String {
    [prefix, ":{", tenant, "}:dedup:", call_id].concat()
}

pub fn claim(prefix: &str, tenant: &str, idempotency_key: &str) -> String {
    [prefix, ":{", tenant, "}:claim:", idempotency_key].concat()
}

pub fn lead_turn(prefix: &str, tenant: &str, crm: &str) -> String {
    format!("{prefix}:{{{tenant}}}:lead-turn:{crm}")
}

pub fn claims_epoch(prefix: &str, tenant: &str) -> String {
    format!("{prefix}:{{{tenant}}}:claims-epoch")
}

pub fn bucket(prefix: &str, tenant: &str, crm: &str, limit: &str) -> String {
    format!("{prefix}:{{{tenant}}}:bucket:{crm}:{limit}")
}

/// A grant of several units (`TokenBuckets::try_take_units`): how many, until the unused ones
/// are given back.
pub fn bucket_grant(prefix: &str, tenant: &str, crm: &str, id: &str) -> String {
    format!("{prefix}:{{{tenant}}}:bucket:{crm}:grant:{id}")
}

pub fn bucket_blocked(prefix: &str, tenant: &str, crm: &str) -> String {
    format!("{prefix}:{{{tenant}}}:bucket:{crm}:blocked")
}

pub fn oauth(prefix: &str, tenant: &str, crm: &str) -> String {
    format!("{prefix}:{{{tenant}}}:oauth:{crm}")
}

pub fn oauth_lock(prefix: &str, tenant: &str, crm: &str) -> String {
    format!("{}:lock", oauth(prefix, tenant, crm))
}

/// `name`: the keyed hash of the number or address (`KeyNames`), never the value itself.
pub fn contact(prefix: &str, tenant: &str, crm: &str, name: &str) -> String {
    format!("{prefix}:{{{tenant}}}:contact:{crm}:{name}")
}

/// An actor's CRM user, by the actor's canonical email.
pub fn owner(prefix: &str, tenant: &str, crm: &str, email: &str) -> String {
    format!("{prefix}:{{{tenant}}}:owner:{crm}:{email}")
}

/// A contact's company and open deals, by a number or address that matched the contact.
pub fn context(prefix: &str, tenant: &str, crm: &str, matched: &str) -> String {
    format!("{prefix}:{{{tenant}}}:context:{crm}:{matched}")
}

pub fn reconcile_turn(prefix: &str, tenant: &str, crm: &str) -> String {
    format!("{prefix}:{{{tenant}}}:reconcile:{crm}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tenants_keys_share_one_hash_tag() {
        let keys = [
            super::dedup("p", "acme", "c1"),
            super::claim("p", "acme", "acme:c1:zoho"),
            super::claims_epoch("p", "acme"),
            super::bucket("p", "acme", "zoho", "daily"),
            super::bucket_blocked("p", "acme", "zoho"),
            super::oauth_lock("p", "acme", "zoho"),
            super::contact("p", "acme", "zoho", "+14155552671"),
            super::reconcile_turn("p", "acme", "zoho"),
        ];
        for k in keys {
            assert!(k.starts_with("p:{acme}:"), "{k}");
        }
    }
}
