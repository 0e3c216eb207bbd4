//! One tenant's client for one CRM: where its API and token endpoint live, its credentials,
//! its rate-limit policy and the region its numbers are read in. Every connector's requests
//! go through [`TenantClient::call`] (and its typed form, [`TenantClient::fetch`]); the
//! connector builds the request and parses the answer, the client only carries them.

use crate::api::{Api, Policy, Reply, Request};
use crate::auth::{AuthStyle, Credentials};
use crate::exchange::{Exchange, Failure};
use crm_common::events::Crm;
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use serde::de::DeserializeOwned;

pub struct TenantClient<P> {
    pub base_url: String,
    pub auth: Credentials,
    pub policy: P,
    /// The tenant's default region: numbers the CRM holds without a country code are read in it.
    pub region: phonenumber::country::Id,
}

impl<P: Policy> TenantClient<P> {
    /// The client every connector builds the same way: credentials from the secret the
    /// tenant's connection names (a token, or an OAuth client shared as `<crm>:<tenant>`),
    /// then the policy, which may depend on them (Pipedrive's OAuth apps have a larger burst).
    pub fn connect(
        crm: Crm,
        tenant: &ResolvedTenant,
        conn: &CrmConnection,
        base_url: String,
        style: AuthStyle,
        policy: impl FnOnce(&Credentials) -> Result<P, String>,
    ) -> Result<Self, String> {
        let auth = Credentials::from_env(&conn.credentials_secret, style, format!("{}:{}", crm.as_str(), tenant.id))?;
        let policy = policy(&auth)?;
        Ok(TenantClient { base_url, auth, policy, region: tenant.default_region })
    }

    /// Sends `req` through the driver (tokens, fencing, auth, retries): the successful
    /// answer, or why it failed.
    pub async fn call(&self, api: &Api, req: &Request, log: &mut Vec<Exchange>) -> Result<Reply, Failure> {
        api.call(&self.policy, &self.base_url, &self.auth, req, log).await
    }

    /// [`call`](Self::call), its answer read as `T` (the CRM's wire type).
    pub async fn fetch<T: DeserializeOwned>(&self, api: &Api, req: &Request, log: &mut Vec<Exchange>) -> Result<T, Failure> {
        self.call(api, req, log).await?.parse()
    }

    /// A read by key whose 404 is an answer: `None` when the CRM has no such record (audited
    /// as that answer, not as a failure), the record read as `T` when it has.
    pub async fn fetch_if_present<T: DeserializeOwned>(
        &self,
        api: &Api,
        req: Request,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<T>, Failure> {
        self.call_if_present(api, req, log).await?.map(|r| r.parse()).transpose()
    }

    /// [`fetch_if_present`](Self::fetch_if_present) whose answer is wanted whole, unread.
    pub async fn call_if_present(&self, api: &Api, req: Request, log: &mut Vec<Exchange>) -> Result<Option<Reply>, Failure> {
        let req = Request { absent_is_answer: true, ..req };
        match self.call(api, &req, log).await {
            Ok(reply) => Ok(Some(reply)),
            Err(f) if f.status == Some(404) => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// Whether `raw`, a number as the CRM holds it (any format), is `e164` when read in the
    /// tenant's region: search matches digits, this confirms the whole number.
    pub fn same_number(&self, raw: &str, e164: &str) -> bool {
        crm_common::phone::to_e164(raw, Some(self.region)).is_ok_and(|n| n == e164)
    }
}

/// Where a tenant's API and token endpoint are, by one rule for every CRM: the tenant's
/// `base_url` or the deployment's default; its `token_url`, else the deployment's token
/// endpoint where that lives on its own host (Zoho's accounts server, Pipedrive's OAuth host)
/// and the tenant kept the default API host, else `token_path` on the API host.
pub fn endpoints(conn: &CrmConnection, default_base: &str, default_token: Option<&str>, token_path: &str) -> (String, String) {
    let base = conn.base_url.as_deref().unwrap_or(default_base).trim_end_matches('/').to_string();
    let token = match (&conn.token_url, &conn.base_url, default_token) {
        (Some(t), _, _) => t.clone(),
        (None, None, Some(t)) => t.to_string(),
        _ => format!("{base}{token_path}"),
    };
    (base, token)
}

/// A tenant's connection on `plan` with these limits, for the connectors' unit tests.
#[cfg(test)]
pub(crate) fn test_connection(plan: &str, limits: &[(&str, u64)]) -> CrmConnection {
    let mut c: CrmConnection = toml::from_str(&format!("plan = '{plan}'\ncredentials_secret = 'X'\n")).unwrap();
    c.limits = limits.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(base: Option<&str>, token: Option<&str>) -> CrmConnection {
        let mut c = test_connection("enterprise", &[]);
        c.base_url = base.map(str::to_string);
        c.token_url = token.map(str::to_string);
        c
    }

    #[test]
    fn endpoints_follow_the_tenant_then_the_deployment() {
        let acc = Some("https://accounts.zoho.com/oauth/v2/token");
        assert_eq!(
            endpoints(&conn(None, None), "https://www.zohoapis.com", acc, "/oauth/v2/token"),
            ("https://www.zohoapis.com".into(), "https://accounts.zoho.com/oauth/v2/token".into())
        );
        // A tenant's own host (crm-sim, a data centre) serves its token endpoint too.
        assert_eq!(
            endpoints(&conn(Some("http://sim:1/"), None), "https://www.zohoapis.com", acc, "/oauth/v2/token"),
            ("http://sim:1".into(), "http://sim:1/oauth/v2/token".into())
        );
        assert_eq!(endpoints(&conn(Some("http://sim:1"), Some("http://t/x")), "d", acc, "/p").1, "http://t/x");
        assert_eq!(
            endpoints(&conn(None, None), "https://api.hubapi.com", None, "/oauth/v1/token").1,
            "https://api.hubapi.com/oauth/v1/token"
        );
    }
}
