//! What every simulated CRM does around its handlers, in the order the real services appear
//! to: authenticate the token, check the permission, inject any configured fault, count the
//! request against the account's limits (or answer the CRM's throttle), run the handler, add
//! the CRM's rate-limit headers, and count the answer by endpoint and status for the admin API.
//! Each CRM supplies the parts that differ (where the token is, its error bodies, its limits)
//! through `CrmApi`.

use crate::faults::{self, FaultKind};
use crate::state::{Account, Caller, Crm, SharedSim};
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    List,
    Create,
    Update,
    Delete,
    Search,
    /// Describe, limits, properties: cheap metadata calls.
    Meta,
}

impl Class {
    /// What the HTTP method says when the route says nothing more.
    pub fn of_method(m: &Method) -> Class {
        match *m {
            Method::GET => Class::Read,
            Method::POST => Class::Create,
            Method::DELETE => Class::Delete,
            _ => Class::Update,
        }
    }

    pub fn is_write(self) -> bool {
        matches!(self, Class::Create | Class::Update | Class::Delete)
    }
}

pub enum AuthFailure {
    Missing,
    Invalid,
    Expired { expired_at_ms: i64, now_ms: i64 },
}

pub trait CrmApi: Send + Sync + 'static {
    const CRM: Crm;
    fn credential(req: &Request) -> Option<String>;
    fn auth_failure(f: AuthFailure) -> Response;
    fn class(method: &Method, route: &str, path: &str) -> Class;
    /// The permission a route needs (revocable through the admin API), if any.
    fn permission(class: Class, route: &str, path: &str) -> Option<&'static str>;
    /// Every permission a route needs, where it needs several (HubSpot's emails: the
    /// contacts scope and `sales-email-read`); the first one revoked answers.
    fn permissions(class: Class, route: &str, path: &str) -> Vec<&'static str> {
        Self::permission(class, route, path).into_iter().collect()
    }
    fn permission_denied(permission: &str) -> Response;
    /// Counts the request against the limits, or answers as the CRM does when one is hit.
    fn admit(acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Result<(), Response>;
    /// Settles a handler's extra charge and adds the CRM's rate-limit headers.
    fn finish(acct: &mut Account, caller: &Caller, class: Class, charge: u64, now: i64, headers: &mut HeaderMap);
    /// The CRM's answer for an injected fault.
    fn fault(kind: FaultKind, acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Response;
}

/// Extra cost a handler found (Zoho charges inserts per ten records), put in the response's
/// extensions; the gate settles it.
#[derive(Debug, Clone, Copy)]
pub struct Charge(pub u64);

pub fn json(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

pub fn set_header(h: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        h.insert(name, v);
    }
}

/// Removes the request from the account's in-flight set however the handler ends (a client
/// that times out drops the future mid-sleep).
struct InFlight {
    sim: SharedSim,
    crm: Crm,
    account: String,
    n: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(a) = self.sim.lock().account(self.crm, &self.account) {
            a.in_flight.remove(&self.n);
        }
    }
}

pub async fn gate<A: CrmApi>(State(sim): State<SharedSim>, matched: MatchedPath, mut req: Request, next: Next) -> Response {
    let route = matched.as_str().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let class = A::class(&method, &route, &path);
    let endpoint = format!("{method} {}", endpoint_label(&route, &path));

    let credential = A::credential(&req);
    let now = sim.clock.now_ms();

    // Authenticate, authorise, pick a fault and admit under one lock.
    let admitted = admit::<A>(&sim, credential.as_deref(), &endpoint, &route, &path, class, now);
    let (caller, firing, n) = match admitted {
        Admission::Answer(resp, delay_ms) => {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            return resp;
        }
        Admission::Go(c, f, n) => (c, f, n),
    };
    let in_flight = InFlight { sim: sim.clone(), crm: A::CRM, account: caller.account.clone(), n };

    if let Some(f) = firing.filter(|f| f.kind == FaultKind::LateWrite) {
        // The CRM goes on with the request after its client gave up: it is applied later,
        // in a task of its own that a dropped connection does not cancel.
        req.extensions_mut().insert(caller.clone());
        let (sim2, caller2, endpoint2) = (sim.clone(), caller.clone(), endpoint.clone());
        tokio::spawn(async move {
            let _in_flight = in_flight;
            tokio::time::sleep(Duration::from_millis(f.apply_after_ms)).await;
            let mut resp = next.run(req).await;
            settle::<A>(&sim2, &caller2, &format!("{endpoint2} (applied late)"), class, None, &mut resp);
        });
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        let now = sim.clock.now_ms();
        let mut w = sim.lock();
        return match w.account(A::CRM, &caller.account) {
            Some(acct) => {
                let resp = A::fault(FaultKind::Status504, acct, &caller, class, now);
                acct.count(&endpoint, 504);
                resp
            }
            None => gateway_error(504),
        };
    }
    let _in_flight = in_flight;

    if let Some(f) = firing.filter(|f| f.kind == FaultKind::Latency) {
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
    }
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    let after = firing.filter(|f| f.after_write);
    settle::<A>(&sim, &caller, &endpoint, class, after, &mut resp);
    if let Some(f) = after.filter(|f| f.latency_ms > 0) {
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
    }
    resp
}

/// After the handler ran: the fault that fires after the write (the client hears a failure),
/// the charge the handler set and the rate-limit headers, and the request counted.
fn settle<A: CrmApi>(sim: &SharedSim, caller: &Caller, endpoint: &str, class: Class, after: Option<faults::Firing>, resp: &mut Response) {
    let charge = resp.extensions().get::<Charge>().map(|c| c.0).unwrap_or(0);
    let now = sim.clock.now_ms();
    let mut w = sim.lock();
    if let Some(acct) = w.account(A::CRM, &caller.account) {
        if let Some(f) = after {
            // The write happened; the client hears a failure (or a success it cannot read).
            *resp = answer_for::<A>(f.kind, acct, caller, class, now);
        }
        A::finish(acct, caller, class, charge, now, resp.headers_mut());
        acct.count(endpoint, resp.status().as_u16());
    }
}

/// A fault's answer: the CRM's own error for it, or the garbled success every CRM answers
/// the same way (200 with `{}`).
fn answer_for<A: CrmApi>(kind: FaultKind, acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Response {
    match kind {
        FaultKind::Garbled => axum::Json(serde_json::json!({})).into_response(),
        kind => A::fault(kind, acct, caller, class, now),
    }
}

enum Admission {
    /// Answer now (after the delay): auth failure, permission, fault or throttle.
    Answer(Response, u64),
    Go(Caller, Option<faults::Firing>, u64),
}

fn admit<A: CrmApi>(
    sim: &SharedSim,
    credential: Option<&str>,
    endpoint: &str,
    route: &str,
    path: &str,
    class: Class,
    now: i64,
) -> Admission {
    let mut w = sim.lock();
    let token = credential.and_then(|t| w.tokens.get(t).cloned().map(|tok| (t.to_string(), tok)));
    let failure = match &token {
        None if credential.is_none() => Some(AuthFailure::Missing),
        None => Some(AuthFailure::Invalid),
        Some((_, t)) if t.revoked || t.crm != A::CRM => Some(AuthFailure::Invalid),
        Some((_, t)) => match t.expires_at_ms {
            Some(exp) if exp <= now => Some(AuthFailure::Expired { expired_at_ms: exp, now_ms: now }),
            _ => None,
        },
    };
    let account_known = token.as_ref().is_some_and(|(_, t)| w.accounts.contains_key(&(A::CRM, t.account.clone())));
    if let Some(f) = failure.or((!account_known).then_some(AuthFailure::Invalid)) {
        let resp = A::auth_failure(f);
        let status = resp.status().as_u16();
        match token.filter(|(_, t)| t.crm == A::CRM).and_then(|(_, t)| w.account(A::CRM, &t.account).map(|_| t.account)) {
            Some(acc) => w.account(A::CRM, &acc).unwrap().count(endpoint, status),
            None => *w.unattributed.entry(endpoint.to_string()).or_default().entry(status).or_default() += 1,
        }
        return Admission::Answer(resp, 0);
    }
    let (tok_str, tok) = token.expect("authenticated");
    let caller = Caller {
        crm: A::CRM,
        account: tok.account.clone(),
        token: tok_str,
        app: tok.app.clone(),
        oauth: tok.kind == crate::state::TokenKind::Oauth,
        expires_at_ms: tok.expires_at_ms,
    };
    w.request_seq += 1;
    let n = w.request_seq;
    let acct = w.account(A::CRM, &caller.account).expect("checked");

    if let Some(p) = A::permissions(class, route, path).into_iter().find(|p| acct.revoked.contains(*p)) {
        {
            let resp = A::permission_denied(p);
            acct.count(endpoint, resp.status().as_u16());
            return Admission::Answer(resp, 0);
        }
    }
    let firing = faults::pick(&mut acct.faults, endpoint, &mut acct.rng);
    if let Some(f) = firing.filter(|f| !f.after_write && !matches!(f.kind, FaultKind::Latency | FaultKind::LateWrite)) {
        let mut resp = answer_for::<A>(f.kind, acct, &caller, class, now);
        acct.count(endpoint, resp.status().as_u16());
        A::finish(acct, &caller, class, 0, now, resp.headers_mut());
        return Admission::Answer(resp, f.latency_ms);
    }
    if let Err(mut resp) = A::admit(acct, &caller, class, now) {
        A::finish(acct, &caller, class, 0, now, resp.headers_mut());
        acct.count(endpoint, resp.status().as_u16());
        return Admission::Answer(resp, 0);
    }
    acct.in_flight.insert(n, now);
    Admission::Go(caller, firing, n)
}

/// The route with its object-naming parameters filled in ("POST /hubspot/crm/v3/objects/calls",
/// "GET /hubspot/crm/v3/objects/calls/{id}"), so counters tell calls from contacts but do not
/// grow a row per record id.
pub fn endpoint_label(route: &str, path: &str) -> String {
    const NAMING: &[&str] = &["{object}", "{to_object}", "{action}", "{sobject}", "{module}", "{field}"];
    // Inside a nested router the path has lost the prefix the route still names: align the ends.
    let (r, p): (Vec<&str>, Vec<&str>) = (route.split('/').collect(), path.split('/').collect());
    if r.len() < p.len() {
        return route.to_string();
    }
    let skip = r.len() - p.len();
    r.iter().enumerate().map(|(i, rs)| if i >= skip && NAMING.contains(rs) { p[i - skip] } else { *rs }).collect::<Vec<_>>().join("/")
}

/// A generic body for injected 5xx answers, for CRMs whose gateway errors are not JSON.
pub fn gateway_error(status: u16) -> Response {
    let text = match status {
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/html")
        .body(Body::from(format!("<html><body><h1>{status} {text}</h1></body></html>")))
        .expect("static response")
}

/// Bearer token from `Authorization: <scheme> <token>`.
pub fn auth_scheme(req: &Request, scheme: &str) -> Option<String> {
    let v = req.headers().get("authorization")?.to_str().ok()?;
    let (s, t) = v.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| t.trim().to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::endpoint_label;

    #[test]
    fn labels_name_objects_not_ids() {
        assert_eq!(
            endpoint_label("/hubspot/crm/v3/objects/{object}/{id}", "/crm/v3/objects/calls/123"),
            "/hubspot/crm/v3/objects/calls/{id}"
        );
        assert_eq!(endpoint_label("/zoho/crm/{version}/{module}", "/crm/v7/Calls"), "/zoho/crm/{version}/Calls");
    }
}
