//! Keyed hashes that stand for customers' numbers and addresses wherever crm-sync must name
//! one outside a CRM request: Redis key names (the contact cache) and the audit store's
//! lookups (`crm-sync trace --phone/--email/--agent`).
//!
//! A name is `HMAC-SHA256(tenant's salt, value)`, its first 128 bits in hex, where a
//! tenant's salt is `HMAC-SHA256(purpose secret, tenant id)` and the purpose secret is
//! `HMAC-SHA256(deployment key, purpose)`. The deployment key is `CRM_SYNC_TOKEN_KEY` (the
//! key that seals OAuth tokens, from the secret store), so someone who reads Redis or the
//! audit store cannot test numbers against the names; a tenant's salt of its own keeps one
//! tenant's names from telling anything about another's; a purpose of its own keeps a Redis
//! key name from being joined to an audit row. Every process derives the same names.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The variable (or file in `CRM_SYNC_SECRETS_DIR`) holding the deployment key: 32 bytes,
/// base64.
pub const TOKEN_KEY_ENV: &str = "CRM_SYNC_TOKEN_KEY";
pub use crate::secrets::SECRETS_DIR_ENV;

/// What the names are for: each purpose has its own secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Redis key names of the contact, owner and context caches.
    CacheKeys,
    /// The audit store's lookup rows (`audit_lookup`).
    AuditLookups,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            // Unchanged since the names were first keyed: caches already filled keep their names.
            Purpose::CacheKeys => b"crm-sync: names of cache keys",
            Purpose::AuditLookups => b"crm-sync: audit lookups",
        }
    }
}

#[derive(Clone)]
pub struct KeyNames {
    secret: Arc<[u8]>,
    /// Each tenant's HMAC, keyed by its salt, ready to clone: deriving the salt is half the
    /// work of a name, and a stage names a few values per activity of the same tenants.
    salted: Arc<RwLock<HashMap<Box<str>, Hmac<Sha256>>>>,
}

/// Tenants whose salted HMAC is kept; past it the map starts again (a bound, not a cache
/// policy: deployments have hundreds or thousands of tenants).
const SALTED_MAX: usize = 100_000;

impl KeyNames {
    pub fn new(deployment_key: &[u8], purpose: Purpose) -> KeyNames {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(deployment_key).expect("HMAC takes any key");
        m.update(purpose.label());
        KeyNames { secret: m.finalize().into_bytes().to_vec().into(), salted: Arc::default() }
    }

    /// Keyed by the deployment key ([`deployment_key`]). Without it (no tenant uses OAuth)
    /// the names are still no number in clear, but anyone with the code can test a number
    /// against them: said once, at start.
    pub fn from_env(purpose: Purpose) -> KeyNames {
        match deployment_key() {
            Ok(Some(k)) => KeyNames::new(&k, purpose),
            Ok(None) => {
                tracing::warn!(
                    "{TOKEN_KEY_ENV} is not set: customers' numbers and addresses are named by hashes without a secret (set it to key them)"
                );
                KeyNames::new(b"", purpose)
            }
            Err(e) => {
                tracing::warn!("{e}: customers' numbers and addresses are named by hashes without a secret");
                KeyNames::new(b"", purpose)
            }
        }
    }

    /// The name of `value` (a number, an address, a contact id) among `tenant`'s.
    pub fn name(&self, tenant: &str, value: &str) -> String {
        self.name_joined(tenant, &[value])
    }

    /// The name of the value `parts` joined (`["phone:", n]` is named as `"phone:" + n`),
    /// without building the joined text.
    pub fn name_joined(&self, tenant: &str, parts: &[&str]) -> String {
        let mut m = self.salted(tenant);
        for part in parts {
            m.update(part.as_bytes());
        }
        const_hex::encode(&m.finalize().into_bytes()[..16])
    }

    /// `tenant`'s HMAC, keyed by its salt.
    fn salted(&self, tenant: &str) -> Hmac<Sha256> {
        if let Some(m) = self.salted.read().unwrap_or_else(|e| e.into_inner()).get(tenant) {
            return m.clone();
        }
        let mut salt = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key");
        salt.update(tenant.as_bytes());
        let m = <Hmac<Sha256> as Mac>::new_from_slice(&salt.finalize().into_bytes()).expect("HMAC takes any key");
        let mut all = self.salted.write().unwrap_or_else(|e| e.into_inner());
        if all.len() >= SALTED_MAX {
            all.clear();
        }
        all.insert(tenant.into(), m.clone());
        m
    }
}

/// The deployment key: `$CRM_SYNC_SECRETS_DIR/CRM_SYNC_TOKEN_KEY` when that file exists, else
/// the variable; None when neither is set; an error when it is not 32 bytes of base64. The
/// value never appears in the error. (The token store seals OAuth tokens with the same key.)
pub fn deployment_key() -> Result<Option<Vec<u8>>, String> {
    let Some(text) = crate::secrets::read(TOKEN_KEY_ENV)?.map(|s| s.text) else { return Ok(None) };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let key = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| format!("{TOKEN_KEY_ENV} is not base64"))?;
    if key.len() != 32 {
        return Err(format!("{TOKEN_KEY_ENV} must hold 32 bytes (base64 of a 256-bit key); it holds {}", key.len()));
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_named_by_a_keyed_hash_of_its_own_per_tenant_and_purpose() {
        let names = KeyNames::new(b"deployment key", Purpose::CacheKeys);
        let n = names.name("acme", "+14155550199");
        assert_eq!(n.len(), 32, "128 bits in hex: {n}");
        assert!(n.chars().all(|c| c.is_ascii_hexdigit()) && !n.contains("4155550199"));
        assert_eq!(n, KeyNames::new(b"deployment key", Purpose::CacheKeys).name("acme", "+14155550199"), "every replica names it the same");
        assert_ne!(n, names.name("globex", "+14155550199"), "each tenant has its own salt");
        assert_ne!(n, names.name("acme", "+14155550198"));
        assert_ne!(
            n,
            KeyNames::new(b"another deployment", Purpose::CacheKeys).name("acme", "+14155550199"),
            "keyed by the deployment's secret"
        );
        assert_ne!(
            n,
            KeyNames::new(b"deployment key", Purpose::AuditLookups).name("acme", "+14155550199"),
            "a cache key name cannot be joined to an audit lookup"
        );
    }

    #[test]
    fn cache_key_names_are_those_of_before() {
        // Names written by earlier releases (HMAC chain over "crm-sync: names of cache keys"):
        // a cache filled before this module moved keeps its entries.
        let n = KeyNames::new(b"deployment key", Purpose::CacheKeys).name("acme", "+14155550199");
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"deployment key").unwrap();
        m.update(b"crm-sync: names of cache keys");
        let secret = m.finalize().into_bytes();
        let mut salt = <Hmac<Sha256> as Mac>::new_from_slice(&secret).unwrap();
        salt.update(b"acme");
        let salt = salt.finalize().into_bytes();
        let mut v = <Hmac<Sha256> as Mac>::new_from_slice(&salt).unwrap();
        v.update(b"+14155550199");
        let want: String = v.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(n, want);
    }
}
