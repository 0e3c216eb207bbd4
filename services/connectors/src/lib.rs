//! The connector library: everything between a write request and a CRM's HTTP API that the
//! writers and the reconciler share, so a repair goes through exactly what a write does.
//!
//! - `client`: one tenant's client (endpoints, credentials, policy) through which every
//!   request goes; `wire`: readers the CRMs' answer types share.
//! - `api`: the HTTP driver: one request sent (rate-limit tokens, fencing, auth header,
//!   timeout), its reply classified, retried under `retry`; `exchange`: how one exchange
//!   ended (`Verdict`), its audit record (`Exchange`), `Failure`; `auth`: credentials and
//!   the OAuth state shared in Redis (it records its token refreshes as exchanges too).
//! - `places`: how many lane batches work at once, given up while one waits on its limits.
//! - `bucket`: token buckets in Redis shared by every replica; `claims`: idempotency claims
//!   with leases, fencing and claim-store epochs.
//! - `contract` and `mapping`: which fields a connector owns and how a call becomes them;
//!   `contacts`: the phone → contact cache; `context`: a contact's company and deals, and
//!   the tenant's rule for which an activity is associated with.
//! - `connector`: the seam each CRM implements, and the algorithms written once over it
//!   (read-before-resend); `people`: the seam of a CRM that takes leads, and `person`
//!   the lead rules written once over it; `hubspot`, `salesforce`, `zoho`, `pipedrive`: one folder per CRM
//!   with the same parts (the connector, `wire` answer types, limits, errors).

pub mod api;
pub mod auth;
pub mod bucket;
pub mod claims;
pub mod client;
pub mod connector;
pub mod contacts;
pub mod context;
pub mod contract;
pub mod exchange;
pub mod hubspot;
pub mod mapping;
pub mod people;
pub mod person;
pub mod person_claims;
pub mod pipedrive;
pub mod places;
pub mod pool;
pub mod retry;
pub mod salesforce;
pub mod tenant_clients;
pub mod wire;
pub mod zoho;

/// Where each CRM's API lives for tenants whose config names no `base_url` (the writer's,
/// the reconciler's and `crm-sync reconcile`'s flags).
#[derive(Debug, Clone, clap::Args)]
pub struct CrmUrls {
    /// HubSpot's API base URL (a tenant's `base_url` overrides it).
    #[arg(long, env = "HUBSPOT_API_URL", default_value = "https://api.hubapi.com")]
    pub hubspot_api_url: String,
    /// Salesforce instance URL for tenants that name none (each org has its own: set
    /// `base_url` per tenant).
    #[arg(long, env = "SALESFORCE_API_URL", default_value = "https://login.salesforce.com")]
    pub salesforce_api_url: String,
    /// Zoho's API domain and accounts host (per data centre) for tenants that name none.
    #[arg(long, env = "ZOHO_API_URL", default_value = "https://www.zohoapis.com")]
    pub zoho_api_url: String,
    #[arg(long, env = "ZOHO_TOKEN_URL", default_value = "https://accounts.zoho.com/oauth/v2/token")]
    pub zoho_token_url: String,
    /// Pipedrive's API host for tenants that name none (OAuth gives each company its own
    /// `api_domain`: set `base_url` per tenant).
    #[arg(long, env = "PIPEDRIVE_API_URL", default_value = "https://api.pipedrive.com")]
    pub pipedrive_api_url: String,
    #[arg(long, env = "PIPEDRIVE_TOKEN_URL", default_value = "https://oauth.pipedrive.com/oauth/token")]
    pub pipedrive_token_url: String,
    /// How far HubSpot's search lags behind writes ("seconds", CRM-APIS §1.2): a read-back
    /// of a key (HubSpot enforces none on calls) waits this long past the late-write horizon.
    #[arg(long, env = "HUBSPOT_SEARCH_LAG", default_value = "10s", value_parser = humantime::parse_duration)]
    pub hubspot_search_lag: std::time::Duration,
    /// How far Zoho's search and `email_available` lag behind writes (unknown for the
    /// latter: taken as search's, the harsher case): an email's read-back waits it out.
    #[arg(long, env = "ZOHO_SEARCH_LAG", default_value = "10s", value_parser = humantime::parse_duration)]
    pub zoho_search_lag: std::time::Duration,
}

/// Runs `$body` with `$c` bound to the connector for `$crm` (the trait's async methods make
/// it generic, not a trait object, so each CRM is its own instantiation). Every connector is
/// built the same way, by `Connector::build`.
#[macro_export]
macro_rules! with_connector {
    ($crm:expr, $contract:expr, $urls:expr, $http_timeout:expr, |$c:ident| $body:expr) => {{
        use $crate::connector::Connector as _;
        let urls: &$crate::CrmUrls = $urls;
        match $crm {
            crm_common::events::Crm::Hubspot => {
                let $c = $crate::hubspot::Hubspot::build($contract, urls, $http_timeout);
                $body
            }
            crm_common::events::Crm::Salesforce => {
                let $c = $crate::salesforce::Salesforce::build($contract, urls, $http_timeout);
                $body
            }
            crm_common::events::Crm::Zoho => {
                let $c = $crate::zoho::Zoho::build($contract, urls, $http_timeout);
                $body
            }
            crm_common::events::Crm::Pipedrive => {
                let $c = $crate::pipedrive::Pipedrive::build($contract, urls, $http_timeout);
                $body
            }
            crm_common::events::Crm::Unknown => anyhow::bail!("unknown CRM: one of hubspot, salesforce, zoho, pipedrive"),
        }
    }};
}
