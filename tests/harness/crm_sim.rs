//! crm-sim as a child process, and a small HTTP client for its CRM and admin APIs.

use super::{bin, Proc};
use serde_json::{json, Value};
use std::time::Duration;

pub struct CrmSim {
    pub url: String,
    pub http: reqwest::blocking::Client,
    _proc: Proc,
}

/// One answer: status, headers (lower-case names) and the body as JSON (Null when empty or
/// not JSON; `text` keeps it as sent).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
    pub fn header_u64(&self, name: &str) -> u64 {
        self.header(name).unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers)).parse().expect("numeric header")
    }
}

pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    Zoho(&'a str),
    PipedriveToken(&'a str),
}

impl CrmSim {
    pub fn start() -> CrmSim {
        let (url, child) = crm_dev::spawn_crm_sim(&bin("crm-sim"), None, true).expect("start crm-sim");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        CrmSim { url, http, _proc: Proc { name: "crm-sim".into(), child, log: None } }
    }

    pub fn call(&self, method: &str, path: &str, auth: Auth, body: Option<&Value>) -> Answer {
        self.call_with(method, path, auth, body, &[], None)
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        auth: Auth,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Answer {
        self.try_call(method, path, auth, body, headers, timeout).expect("request to crm-sim")
    }

    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        auth: Auth,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> reqwest::Result<Answer> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(m, format!("{}{}", self.url, path));
        rb = match auth {
            Auth::None => rb,
            Auth::Bearer(t) => rb.header("authorization", format!("Bearer {t}")),
            Auth::Zoho(t) => rb.header("authorization", format!("Zoho-oauthtoken {t}")),
            Auth::PipedriveToken(t) => rb.header("x-api-token", t),
        };
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b.to_string());
        }
        if let Some(t) = timeout {
            rb = rb.timeout(t);
        }
        let resp = rb.send()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, headers, body, text })
    }

    /// A form-encoded POST (the OAuth token endpoints).
    pub fn form(&self, path: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
        let mut rb = self.http.post(format!("{}{}", self.url, path)).form(form);
        if let Some((u, p)) = basic {
            rb = rb.basic_auth(u, Some(p));
        }
        let resp = rb.send().expect("request to crm-sim");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap_or_default();
        Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
    }

    /// The admin API; panics unless it answers 2xx.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let a = self.call(method, &format!("/admin{path}"), Auth::None, body.as_ref());
        assert!(a.status < 300, "admin {method} {path} → {} {}", a.status, a.text);
        a.body
    }

    pub fn account(&self, spec: Value) -> Value {
        self.admin("POST", "/accounts", Some(spec))
    }

    pub fn freeze(&self) -> i64 {
        self.admin("POST", "/clock", Some(json!({"freeze": true})))["now_ms"].as_i64().unwrap()
    }

    pub fn advance(&self, ms: i64) {
        self.admin("POST", "/clock", Some(json!({"advance_ms": ms})));
    }

    pub fn fault(&self, crm: &str, account: &str, rule: Value) {
        self.admin("POST", &format!("/accounts/{crm}/{account}/faults"), Some(rule));
    }

    pub fn state(&self, crm: &str, account: &str) -> Value {
        self.admin("GET", &format!("/accounts/{crm}/{account}"), None)
    }

    /// Live records of an object, as the CRM holds them.
    pub fn records(&self, crm: &str, account: &str, object: &str) -> Vec<Value> {
        self.admin("GET", &format!("/accounts/{crm}/{account}/objects/{object}?deleted=false"), None)["records"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `n` requests are being handled by the account (a slow request has arrived).
    pub fn wait_in_flight(&self, crm: &str, account: &str, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.state(crm, account)["usage"]["in_flight"].as_u64().unwrap_or(0) < n {
            assert!(std::time::Instant::now() < deadline, "{n} request(s) never reached {crm} {account}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many answers an endpoint gave with a status.
    pub fn count(&self, crm: &str, account: &str, endpoint: &str, status: u16) -> u64 {
        self.state(crm, account)["counters"][endpoint][status.to_string()].as_u64().unwrap_or(0)
    }
}
