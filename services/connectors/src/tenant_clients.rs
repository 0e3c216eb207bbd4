//! What a writer or the reconciler makes of the tenants file: a client for each tenant
//! connected to its CRM (or why there is none), built at start and again whenever the file
//! changes (`crm_common::live_tenants`), with the tenants' field overrides checked against
//! the contracts before anything is swapped.

use crate::connector::{Connector, TenantOf};
use crm_common::clock::now_ms;
use crm_common::events::Crm;
use crm_common::live_tenants::{Build, Loaded};
use crm_common::tenants::Tenants;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A tenant's client, or why it has none (its writes go to the DLQ as AUTH_FAILED).
pub type Client<C> = Arc<Result<TenantOf<C>, String>>;

pub struct Clients<C: Connector> {
    /// Per tenant connected to this CRM.
    pub clients: HashMap<String, Client<C>>,
    /// Tenants this writer had a client for and a reload took away (removed from the file,
    /// or their connection to this CRM removed), with when (ms): their writes are
    /// dead-lettered at once, naming the removal.
    pub gone: BTreeMap<String, i64>,
}

impl<C: Connector> Clients<C> {
    /// Whether a write for `tenant` can be ruled on: it has a client, or had one and lost it.
    pub fn settled(&self, tenant: &str) -> bool {
        self.clients.contains_key(tenant) || self.gone.contains_key(tenant)
    }

    /// Why a write for `tenant` cannot go to `crm`, for its dead letter.
    pub fn why_not(&self, tenant: &str, crm: Crm) -> String {
        match self.gone.get(tenant) {
            Some(at) => format!(
                "tenant '{tenant}' lost its {} connection in TENANTS_CONFIG at {}: its writes stop (replay once it is connected again)",
                crm.as_str(),
                crm_common::clock::rfc3339_ms(*at)
            ),
            None => format!("tenant '{tenant}' has no {} connection in TENANTS_CONFIG", crm.as_str()),
        }
    }
}

/// The `build` for `live_tenants` of a service writing to or reading from the connector's
/// CRM: every tenant connected to it checked (it asks only for kinds this deployment
/// writes there; its field overrides pass the contracts) and given a client. A tenant whose connection and region did not change keeps
/// its client (its credentials' state, its secret file's watch). The contracts' overrides
/// are replaced last, once nothing else can refuse the file.
pub fn build<C: Connector>(connector: Arc<C>) -> Box<Build<Clients<C>>> {
    Box::new(move |tenants: &Tenants, prev: Option<&Loaded<Clients<C>>>| {
        let crm = connector.crm();
        let mut clients = HashMap::new();
        for id in tenants.ids() {
            let t = tenants.get(&id).expect("listed");
            let Some(conn) = t.crms.get(&crm) else { continue };
            // Asked for a kind the writer cannot write: refuse, rather than dead-letter
            // every such activity the deduper sends.
            if let Some(kind) = conn.activities.iter().find(|k| !connector.kinds().contains(k)) {
                anyhow::bail!(
                    "tenants.{id}.crms.{}.activities names '{}', which writer --crm {} does not write (it writes: {}; a kind needs its contract, contracts/<crm>.<kind>.toml, and support in the connector); remove it from TENANTS_CONFIG",
                    crm.as_str(),
                    kind.as_str(),
                    crm.as_str(),
                    connector.kinds().iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            let unchanged = prev.and_then(|p| {
                let before = p.tenants.get(&id)?;
                let same = before.crms.get(&crm) == Some(conn) && before.default_region == t.default_region;
                same.then(|| p.stage.clients.get(&id).cloned()).flatten()
            });
            let client = match unchanged {
                Some(c) => c,
                None => {
                    let client = connector.tenant(t, conn);
                    if let Err(why) = &client {
                        tracing::error!(tenant = id, "cannot write for this tenant; its writes go to the DLQ as AUTH_FAILED: {why}");
                    }
                    Arc::new(client)
                }
            };
            clients.insert(id, client);
        }
        let now = now_ms();
        let mut gone = prev.map(|p| p.stage.gone.clone()).unwrap_or_default();
        if let Some(p) = prev {
            for id in p.stage.clients.keys().filter(|id| !clients.contains_key(*id)) {
                gone.insert(id.clone(), now);
            }
        }
        gone.retain(|id, _| !clients.contains_key(id));
        connector.contracts().set_tenant_overrides(tenants, crm)?;
        Ok(Clients { clients, gone })
    })
}
