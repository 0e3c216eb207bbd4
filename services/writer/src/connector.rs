//! What a CRM connector provides to the writer runtime. Each connector is a folder with the
//! same parts: `mod.rs` (client: requests and the parsing of answers), `limits.rs` (rate-limit
//! policy and header parsing), `errors.rs` (classification), and the contract file in
//! `contracts/<crm>.toml` for field mapping; its tests run against crm-sim.

use crate::api::{Api, Exchange, Failure};
use crm_common::events::{Crm, CrmWriteRequest};
use crm_common::tenants::{CrmConnection, ResolvedTenant};

/// One write, planned by the runtime after its claim.
#[derive(Debug, Clone)]
pub struct Item {
    pub req: CrmWriteRequest,
    /// Some: update this record; None: create.
    pub record_id: Option<String>,
    /// The CRM contact to associate (creates only).
    pub contact_id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ItemResult {
    Written { record_id: String, created: bool },
    Failed(Failure),
}

pub trait Connector: Send + Sync + 'static {
    /// Per-tenant state: base URL, credentials, rate-limit policy.
    type Tenant: Send + Sync + 'static;

    fn crm(&self) -> Crm;
    fn batch_max(&self) -> usize;
    /// Builds the tenant's client. Err: why it cannot write for this tenant (a missing
    /// secret, say), which dead-letters its writes as AUTH_FAILED.
    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<Self::Tenant, String>;
    /// Contacts whose number, normalised to E.164, equals `e164`.
    fn find_contact(
        &self,
        api: &Api,
        t: &Self::Tenant,
        e164: &str,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Option<String>, Failure>> + Send;

    fn create_contact(
        &self,
        api: &Api,
        t: &Self::Tenant,
        e164: &str,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<String, Failure>> + Send;

    /// The record holding `key`, if the CRM has one (recovery after an expired lease).
    fn lookup(
        &self,
        api: &Api,
        t: &Self::Tenant,
        key: &str,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Option<String>, Failure>> + Send;

    /// Writes `items` (creates and updates), as few API calls as the CRM allows; one result
    /// per item, in order.
    fn write(
        &self,
        api: &Api,
        t: &Self::Tenant,
        items: &[Item],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Vec<ItemResult>> + Send;
}
