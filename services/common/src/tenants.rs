//! TENANTS_CONFIG: who our tenants are, how to read their numbers and which CRMs they have
//! connected. A TOML file, loaded at start; a bad file stops the service with a message
//! naming the problem rather than half-working. See deploy/tenants.example.toml.

use crate::events::Crm;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmConnection {
    /// The tenant's plan at the CRM; selects the rate-limit policy.
    pub plan: String,
    /// Name of the secret (an environment variable in dev, a Kubernetes secret key in
    /// deploy/) holding the credentials. Never the credentials themselves.
    pub credentials_secret: String,
    /// Base URL override (crm-sim in dev and tests).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Account id at the CRM (portal, org, company), where the API needs it.
    #[serde(default)]
    pub account: Option<String>,
}

/// The loaded, validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    tenants: HashMap<String, ResolvedTenant>,
}

#[derive(Debug, Clone)]
pub struct ResolvedTenant {
    pub id: String,
    pub default_region: phonenumber::country::Id,
    pub show_phone_numbers_in_audit: bool,
    pub crms: BTreeMap<Crm, CrmConnection>,
}

impl Tenants {
    pub fn load(path: &Path) -> anyhow::Result<Tenants> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read TENANTS_CONFIG {}: {e}", path.display()))?;
        Tenants::parse(&text).map_err(|e| anyhow::anyhow!("TENANTS_CONFIG {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Tenants> {
        let file: TenantsFile = toml::from_str(text)?;
        let mut tenants = HashMap::new();
        for (id, t) in file.tenants {
            let region = crate::phone::region(&t.default_region)
                .map_err(|e| anyhow::anyhow!("tenant '{id}': default_region: {e}"))?;
            let mut crms = BTreeMap::new();
            for (name, conn) in t.crms {
                let crm: Crm = name
                    .parse()
                    .map_err(|e| anyhow::anyhow!("tenant '{id}': crms: {e}"))?;
                crms.insert(crm, conn);
            }
            tenants.insert(
                id.clone(),
                ResolvedTenant {
                    id,
                    default_region: region,
                    show_phone_numbers_in_audit: t.show_phone_numbers_in_audit,
                    crms,
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

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
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
    fn mistakes_are_named() {
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"XX\"\n").unwrap_err();
        assert!(e.to_string().contains("tenant 'a'"), "{e}");
        let e = Tenants::parse("[tenants.a]\ndefault_region = \"US\"\nregoin = 1\n").unwrap_err();
        assert!(e.to_string().contains("regoin"), "{e}");
        let e = Tenants::parse(
            "[tenants.a]\ndefault_region = \"US\"\n[tenants.a.crms.dynamics]\nplan='x'\ncredentials_secret='y'\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("dynamics"), "{e}");
    }
}
