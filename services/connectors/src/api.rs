//! One CRM API call, the way every connector makes it: take a token from the tenant's
//! buckets, send, correct the buckets from the answer's headers, classify the answer, and
//! retry what is transient with backoff and jitter until the CRM policy's time limit. A
//! throttle (429, or the CRM's equivalent) blocks the bucket until the CRM's reset for every
//! replica and costs no attempt. Every HTTP exchange is logged for audit (never a secret).

use crate::bucket::{BucketSet, Grant, Take, TokenBuckets};
pub use crate::exchange::{urlencode, Exchange, Failure, Verdict};
use crate::retry::Backoff;
use crm_common::events::DlqReason;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A request, built by a connector.
/// What a request does. Each CRM's policy decides from it which of its limits the request
/// spends and how much (HubSpot: search has its own limit; Pipedrive: each kind has its own
/// token cost); it also labels the request's latency metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// Records by id, or a query that reads them (SOQL, COQL).
    Read,
    /// A page of a listing.
    List,
    /// A search (an index that lags writes).
    Search,
    Create,
    Update,
    /// Create or update by a key the CRM enforces (Salesforce's external id).
    Upsert,
    /// The CRM's schema: fields of an object.
    Schema,
}

impl RequestClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestClass::Read => "read",
            RequestClass::List => "list",
            RequestClass::Search => "search",
            RequestClass::Create => "create",
            RequestClass::Update => "update",
            RequestClass::Upsert => "upsert",
            RequestClass::Schema => "schema",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: reqwest::Method,
    /// Path and query under the tenant's base URL.
    pub path: String,
    /// The JSON body, serialised when the request is built: a request can wait long for
    /// its tokens, and a body held as a `serde_json::Value` tree took several times its
    /// size (HubSpot's batch creates were about 40 of a 140 MB heap peak under a backlog).
    pub body: Option<bytes::Bytes>,
    /// What it does: which buckets it spends from (the connector's policy decides).
    pub class: RequestClass,
    /// What audit shows of the body when the body itself holds something audit must not
    /// (a bare phone number in a search filter); None: the body, with E.164 numbers masked.
    /// When set, the answer is not kept in audit either.
    pub audit_body: Option<Value>,
    /// Whether sending it again after a timeout or a 5xx is harmless (reads, updates, upserts
    /// by key, HubSpot creates that carry a unique key). When false (Zoho and Pipedrive
    /// creates) `call` does not resend: it returns a failure marked `maybe_applied`, and the
    /// connector looks the records up before it sends what is still missing.
    pub replay_safe: bool,
    /// The idempotency keys of the writes this request carries (creates and updates): it
    /// goes out only while this writer still holds every one's lease, checked (and renewed)
    /// in Redis after its tokens are taken, right before it is sent (DESIGN §4, fencing).
    pub fence: Vec<String>,
    /// What audit and logs show instead of the path, when the path holds a credential
    /// (HubSpot's token introspection takes the token in it).
    pub shown_path: Option<String>,
    /// A read by key whose 404 means "no such record": an answer the caller acts on (create
    /// it, call it gone), audited as such rather than as a failure. Set by
    /// [`crate::client::TenantClient::fetch_if_present`].
    pub absent_is_answer: bool,
    /// Headers of its own, besides auth and content type (Salesforce's
    /// `Sforce-Auto-Assign`): none carries a credential.
    pub headers: Vec<(&'static str, String)>,
}

impl Request {
    pub fn new(method: reqwest::Method, path: impl Into<String>, class: RequestClass) -> Request {
        Request {
            method,
            path: path.into(),
            body: None,
            class,
            audit_body: None,
            replay_safe: true,
            fence: vec![],
            shown_path: None,
            absent_is_answer: false,
            headers: vec![],
        }
    }

    /// Sent with this header too.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Request {
        self.headers.push((name, value.into()));
        self
    }

    /// What audit and logs show instead of the path (one that holds a credential).
    pub fn shown_as(mut self, path: impl Into<String>) -> Request {
        self.shown_path = Some(path.into());
        self
    }

    /// How many records it writes: a write is fenced by the key of each record it carries
    /// (1 for anything else). Zoho charges its credits by it.
    pub fn records(&self) -> u64 {
        self.fence.len().max(1) as u64
    }

    /// Sent only while this writer holds the leases of these keys.
    pub fn fenced<'a>(mut self, keys: impl IntoIterator<Item = &'a str>) -> Request {
        self.fence = keys.into_iter().map(str::to_string).collect();
        self
    }

    pub fn get(path: impl Into<String>, class: RequestClass) -> Request {
        Request::new(reqwest::Method::GET, path, class)
    }

    pub fn body(mut self, body: impl serde::Serialize) -> Request {
        // Bodies are JSON objects with string keys, built by the connectors: nothing a CRM
        // or an event sends can make this fail.
        self.body = Some(serde_json::to_vec(&body).expect("a request body serialises").into());
        self
    }

    /// What audit shows instead of the body (and the answer is not kept).
    pub fn audited_as(mut self, shown: Value) -> Request {
        self.audit_body = Some(shown);
        self
    }

    /// A create without a key the CRM enforces: never resent blindly.
    pub fn not_replay_safe(mut self) -> Request {
        self.replay_safe = false;
        self
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// An answer with no headers (for classification tests).
    #[cfg(test)]
    pub fn of(status: u16, body: &str) -> Reply {
        Reply { status, headers: HeaderMap::new(), body: body.into() }
    }

    /// The answer read as the CRM's wire type `T`; an empty body (204 No Content) as `{}`.
    /// An answer that does not have the shape is a failure that says so, never an empty
    /// result: a read-back that cannot be read must not pass for "not there". It is marked
    /// `maybe_applied`, since a write may be behind an answer nobody could read.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        let body = if self.body.trim().is_empty() { "{}" } else { self.body.as_str() };
        serde_json::from_str(body).map_err(|e| Failure {
            maybe_applied: true,
            status: Some(self.status),
            excerpt: Some(excerpt(&self.body)),
            ..Failure::new(DlqReason::RetriesExhausted, format!("the CRM's answer ({}) is not in the shape expected: {e}", self.status))
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `name=value` for each of these headers the answer has, for audit (rate-limit state).
    pub fn headers_text(&self, names: &[&str]) -> String {
        names.iter().filter_map(|h| self.header(h).map(|v| format!("{h}={v}"))).collect::<Vec<_>>().join(" ")
    }
}

/// What the connector contributes to every call.
pub trait Policy: Send + Sync {
    fn buckets(&self, class: RequestClass) -> BucketSet;
    /// Tokens a request of `class` writing `records` records ([`Request::records`]) spends
    /// from each limit of its set, in order (Pipedrive's daily budget charges by endpoint,
    /// Zoho's credits by records); 1 from each by default. Asked before a request is built
    /// too (`Api::take_ahead`), so it depends on nothing else.
    fn costs(&self, class: RequestClass, records: u64, set: &BucketSet) -> Vec<u64> {
        let _ = (class, records);
        vec![1; set.limits.len()]
    }
    /// (limit name, remaining) pairs read from an answer's headers.
    fn observed(&self, reply: &Reply, class: RequestClass) -> Vec<(String, u64)>;
    /// The limits the CRM states in an answer's headers: what the account really has, for
    /// `crm-sync tenants check` to hold the configured plan against. None by default (a CRM
    /// that states none, as Zoho).
    fn stated_limits(&self, reply: &Reply, class: RequestClass) -> Vec<StatedLimit> {
        let _ = (reply, class);
        vec![]
    }
    fn classify(&self, reply: &Reply) -> Verdict;
    /// The headers worth keeping in audit (rate-limit state).
    fn rate_headers(&self, reply: &Reply) -> String;
}

/// A limit as the CRM states it in an answer (`Policy::stated_limits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatedLimit {
    /// The bucket limit it is (`Limit::name`).
    pub limit: &'static str,
    /// The tenant's `limits` setting that sets it (the plan's field).
    pub setting: &'static str,
    pub max: u64,
}

pub struct Api {
    pub http: reqwest::Client,
    pub buckets: TokenBuckets,
    pub backoff: Backoff,
    /// Transient failures are retried until this long after the first attempt.
    pub retry_limit: Duration,
    /// Percent of every limit this client leaves to others: 0 for the writers; the
    /// reconciler's share-keeping, so its reads and repairs never starve live writes.
    pub reserve_pct: u64,
    /// The writer's claims, for fencing requests that carry keys; None where nothing is
    /// claimed (the reconciler's reads and restores).
    pub claims: Option<crate::claims::Claims>,
    /// Where OAuth tokens are shared between replicas (None: each process keeps its own).
    pub tokens: Option<crate::auth::TokenStore>,
    /// Requests on the wire at once, across every tenant (see `Api::http_client`).
    pub in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    /// Tokens lanes took ahead for the requests they expect (`expect`, `give_back`).
    pub pools: std::sync::Arc<crate::pool::Pools>,
    /// How long a request may wait for tokens before it fails instead (None: as long as the
    /// limits say, hours at a spent daily allowance, as the services must). A command a
    /// person runs (`crm-sync tenants check`) reports a spent limit rather than wait it out.
    pub token_wait_limit: Option<Duration>,
}

fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(500).collect();
    if s.len() > e.len() {
        e.push('…');
    }
    e
}

impl Api {
    /// The HTTP client and in-flight limit for `concurrency` requests at once. Without a
    /// limit a writer with thousands of sending tenants opened a connection per lane (2,400
    /// sockets and 500 MiB at 10,000 tenants in `bench tenants`), though the CRMs' hosts are
    /// few; idle connections kept per host follow the same number.
    pub fn http_client(
        timeout: Duration,
        concurrency: usize,
    ) -> reqwest::Result<(reqwest::Client, std::sync::Arc<tokio::sync::Semaphore>)> {
        let http = reqwest::Client::builder().timeout(timeout).pool_max_idle_per_host(concurrency).build()?;
        Ok((http, std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)))))
    }

    /// How long after a failed request a CRM may still apply it (from the claims' timing).
    pub fn late_write_horizon(&self) -> Duration {
        self.claims.as_ref().map_or(Duration::ZERO, |c| c.timing().late_write_horizon)
    }

    /// The lane of `tenant` expects to send `n` more requests of `class` (what its cache read
    /// missed): the first of them takes tokens for the rest in the same round trip (see
    /// `pool`). An estimate, never a promise: what is not used goes back with `give_back`.
    pub fn expect(&self, tenant: &str, class: RequestClass, n: u64) {
        self.pools.expect(tenant, class, n);
    }

    /// The lane of `tenant` is done with its batch: the tokens it took ahead and did not use
    /// go back, riding the tenant's next round trip to Redis (`TokenBuckets::add_settles`).
    pub fn give_back(&self, tenant: &str) {
        for h in self.pools.release(tenant) {
            self.buckets.give_back_soon(&h.set, &h.costs, &h.grant, h.used);
        }
    }

    /// The units the lane of `tenant` took ahead and can no longer draw (`Pools::expired`) go
    /// back, riding the tenant's next round trip.
    fn give_back_expired(&self, tenant: &str) {
        for h in self.pools.expired(tenant) {
            self.buckets.give_back_soon(&h.set, &h.costs, &h.grant, h.used);
        }
    }

    /// Takes, in one round trip, the tokens of what the lane of `tenant` is about to send: the
    /// reads it expects (`expect`; one take per bucket set, of as many units as fit) and its
    /// writes, one take each, fenced by their keys (`writes`: each chunk the lane will send,
    /// its class and keys). Its requests then draw them (`pool`) instead of taking their own:
    /// a write's unit only within a third of the lease its take renewed (at most `pool::HOLD`),
    /// so the lease it checked is still this writer's when the write goes out. Nothing is
    /// waited for: a take that would wait, or whose keys are no longer ours, leaves its
    /// requests to take their own, as they would have. Unused units go back with `give_back`.
    pub async fn take_ahead(&self, policy: &dyn Policy, tenant: &str, writes: &[(RequestClass, Vec<String>)]) {
        struct Ahead {
            set: BucketSet,
            costs: Vec<u64>,
            want: u64,
            fence: Option<(Vec<String>, crate::bucket::Fence)>,
            id: String,
        }
        self.give_back_expired(tenant);
        let mut aheads: Vec<Ahead> = vec![];
        for (class, n) in self.pools.expected(tenant) {
            let set = policy.buckets(class);
            let costs = policy.costs(class, 1, &set);
            match aheads.iter_mut().find(|a| a.set.limits == set.limits && a.costs == costs) {
                Some(a) => a.want += n,
                None => aheads.push(Ahead { set, costs, want: n, fence: None, id: uuid::Uuid::new_v4().simple().to_string() }),
            }
        }
        let within = self.claims.as_ref().map_or(Duration::ZERO, |c| (c.lease() / 3).min(crate::pool::HOLD));
        if let Some(claims) = self.claims.as_ref().filter(|_| !within.is_zero()) {
            for (class, keys) in writes.iter().filter(|(_, k)| !k.is_empty()) {
                let set = policy.buckets(*class);
                let costs = policy.costs(*class, keys.len() as u64, &set);
                let fence = claims.fence_of(tenant, keys);
                aheads.push(Ahead {
                    set,
                    costs,
                    want: 1,
                    fence: Some((keys.clone(), fence)),
                    id: uuid::Uuid::new_v4().simple().to_string(),
                });
            }
        }
        if aheads.is_empty() {
            return;
        }
        let takes: Vec<crate::bucket::TakeArgs<'_>> = aheads
            .iter()
            .map(|a| crate::bucket::TakeArgs {
                set: &a.set,
                costs: &a.costs,
                want: a.want.min(crate::pool::MOST),
                hold: crate::pool::HOLD,
                reserve_pct: self.reserve_pct,
                id: &a.id,
                fence: a.fence.as_ref().map(|(_, f)| f),
                grant: true,
            })
            .collect();
        let answers = match self.buckets.take_many(tenant, &takes).await {
            Ok(a) => a,
            Err(e) => {
                // The requests take their own tokens, as they would have.
                tracing::warn!(error = %e, "could not take a lane's tokens ahead");
                return;
            }
        };
        for (a, (take, units, at_ms)) in aheads.into_iter().zip(answers) {
            if take != Take::Granted {
                continue;
            }
            let grant = Grant { id: a.id, units: units.max(1), at_ms };
            match a.fence {
                None => self.pools.hold(&a.set, &a.costs, grant, 0),
                Some((keys, _)) => self.pools.hold_fenced(&a.set, &a.costs, grant, 0, keys, within),
            }
        }
    }

    /// Waits for tokens (nothing is dropped while a bucket is empty). `id` names the take,
    /// for giving concurrency slots back. A request that carries writes is fenced in the same
    /// round trip, after any wait and right before the send: a writer that lost a key's lease
    /// while it waited (paused, throttled, partitions moved) must not write it, and spends
    /// nothing; Err names the keys no longer ours. Waits for Redis rather than send unfenced.
    /// `want` > 1 (never with a fence): up to that many units, the first for this request
    /// (`pool`); the grant is returned when more than one was granted.
    async fn acquire(
        &self,
        set: &BucketSet,
        costs: &[u64],
        id: &str,
        req: &Request,
        endpoint: &str,
        want: u64,
    ) -> Result<(Duration, Option<Grant>), Failure> {
        let fence = self.claims.as_ref().filter(|_| !req.fence.is_empty()).map(|c| c.fence_of(&set.tenant_id, &req.fence));
        let started = Instant::now();
        let mut redis_backoff = 1;
        loop {
            // Units of the lane's that can no longer be drawn go back with this take (it
            // settles first), so they are not what it waits for.
            self.give_back_expired(&set.tenant_id);
            let took = if want > 1 && fence.is_none() {
                self.buckets.try_take_units(set, costs, want, crate::pool::HOLD, self.reserve_pct, id).await.map(|g| match g {
                    Ok(g) if g.units > 1 => (Take::Granted, Some(g)),
                    Ok(_) => (Take::Granted, None),
                    Err(w) => (Take::Wait(w), None),
                })
            } else {
                self.buckets.try_take_fenced(set, costs, self.reserve_pct, id, fence.as_ref()).await.map(|t| (t, None))
            };
            match took {
                Ok((Take::Granted, grant)) => return Ok((started.elapsed(), grant)),
                Ok((Take::Wait(w), _)) if self.token_wait_limit.is_some_and(|l| started.elapsed() + w > l) => {
                    return Err(Failure::new(
                        DlqReason::RetriesExhausted,
                        format!(
                            "{endpoint}: not sent: {}'s limits for tenant {} leave this client no tokens for another {} s (the buckets' count, which the CRM's answers correct)",
                            set.crm,
                            set.tenant_id,
                            w.as_secs().max(1)
                        ),
                    ));
                }
                Ok((Take::Wait(w), _)) => {
                    tracing::debug!(tenant = %set.tenant_id, endpoint, wait_ms = w.as_millis() as u64, "waiting for tokens");
                    // Waiting for a limit (for hours, at a spent daily allowance) is not stalling.
                    crm_common::health::beat();
                    crate::places::sleep(w.min(Duration::from_secs(5))).await
                }
                Ok((Take::FencedOff(lost), _)) => {
                    let lost: Vec<String> = lost.into_iter().filter_map(|j| req.fence.get(j).cloned()).collect();
                    tracing::warn!(
                        keys = lost.len(),
                        endpoint,
                        "lease lost before sending: the write is abandoned here, another writer holds it"
                    );
                    return Err(Failure {
                        fenced_off: lost,
                        ..Failure::new(
                            DlqReason::RetriesExhausted,
                            format!("{endpoint}: not sent: this writer's lease on the key was taken over"),
                        )
                    });
                }
                Err(e) => {
                    // Redis down: wait for it rather than write past the limits.
                    tracing::error!(error = %e, "token bucket unavailable; waiting for Redis");
                    crate::places::sleep(Duration::from_millis(200 * redis_backoff)).await;
                    redis_backoff = (redis_backoff * 2).min(25);
                }
            }
        }
    }

    /// Tokens for one attempt of `req`: a unit its lane took ahead, or a take now (of several
    /// units when the lane expects more requests of the same set). Returns the take's id, the
    /// unit's number in it (1 for a take of one) and how long it waited.
    async fn tokens_for(
        &self,
        policy: &dyn Policy,
        set: &BucketSet,
        costs: &[u64],
        req: &Request,
        endpoint: &str,
    ) -> Result<(String, u64, Duration), Failure> {
        if let Some((id, unit)) = self.pools.draw(set, costs, &req.fence) {
            return Ok((id, unit, Duration::ZERO));
        }
        let want = if req.fence.is_empty() {
            self.pools.wanted(set, req.class, |c| c != req.class && policy.buckets(c).limits == set.limits)
        } else {
            1
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (waited, grant) = self.acquire(set, costs, &id, req, endpoint, want).await?;
        if let Some(g) = grant {
            self.pools.hold(set, costs, g, 1);
        }
        Ok((id, 1, waited))
    }

    /// Sends `req` to `base_url` with `auth` headers, with tokens, corrections, throttles and
    /// retries. Returns the successful answer, or why it failed, and every exchange.
    pub async fn call(
        &self,
        policy: &dyn Policy,
        base_url: &str,
        auth: &crate::auth::Credentials,
        req: &Request,
        log: &mut Vec<Exchange>,
    ) -> Result<Reply, Failure> {
        let first = Instant::now();
        let set = policy.buckets(req.class);
        let costs = policy.costs(req.class, req.records(), &set);
        let path = req.shown_path.as_deref().unwrap_or(&req.path);
        let endpoint = format!("{} {}", req.method, path.split('?').next().unwrap_or(""));
        let sent = match (&req.audit_body, &req.body) {
            (Some(shown), _) => excerpt(&shown.to_string()),
            (None, Some(body)) => excerpt(&String::from_utf8_lossy(body)),
            (None, None) => String::new(),
        };
        let mut attempt = 0u32;
        let mut refreshed = false;
        let mut counted = false;
        let metrics = crm_common::telemetry::crm_metrics();
        let priority = if self.reserve_pct > 0 { "background" } else { "live" };
        loop {
            attempt += 1;
            let (name, value) = match auth.header(&self.http, self.tokens.as_ref(), log).await {
                Ok(h) => h,
                Err(crate::auth::AuthError::Refused(f)) => return Err(f),
                // The token endpoint is down, slow or throttling minting: like any CRM
                // call, retried with backoff until the policy's limit, never AUTH_FAILED.
                Err(crate::auth::AuthError::Unavailable(why)) => {
                    if first.elapsed() >= self.retry_limit {
                        return Err(Failure::new(
                            DlqReason::RetriesExhausted,
                            format!("{endpoint}: no access token after {attempt} attempts over {} s: {why}", first.elapsed().as_secs()),
                        ));
                    }
                    metrics.retry(&set.crm, "token_endpoint");
                    crate::places::sleep(self.backoff.wait(attempt)).await;
                    continue;
                }
            };
            let (take_id, unit, waited) = match self.tokens_for(policy, &set, &costs, req, &endpoint).await {
                Ok(t) => t,
                Err(f) => {
                    metrics.retry(&set.crm, "fenced_off");
                    return Err(f);
                }
            };
            if !counted {
                // One fewer expected of its lane, once however many attempts it takes.
                counted = true;
                self.pools.sent(&set.tenant_id, req.class);
            }
            metrics.token_wait(&set.crm, priority, waited.as_secs_f64() * 1000.0);
            let a = Attempt { policy, set: &set, req, endpoint: &endpoint, sent: &sent, number: attempt, priority };
            // A place on the wire, after the tokens: a tenant waiting for its bucket holds
            // none, so nobody waits behind an empty bucket, only behind requests being sent.
            let permit = self.in_flight.acquire().await.expect("the in-flight limit is never closed");
            let (verdict, reply) = self.send_once(&a, base_url, (name, value), log).await;
            drop(permit);
            // Answered (or timed out): the CRM has counted it by now. What its headers said
            // is left corrects the buckets when it is settled.
            let observed = reply.as_ref().map(|r| policy.observed(r, req.class)).unwrap_or_default();
            for (limit, remaining) in &observed {
                metrics.remaining(&set.crm, &set.tenant_id, limit, *remaining);
            }
            // Without a round trip of its own: the tenant's next take or its lane's DONE
            // carries it, or the flusher within a few ms; scored by this answer either way.
            self.buckets.settle_unit_soon(&set, &take_id, &costs, unit, &observed);
            match verdict {
                Verdict::Ok => return Ok(reply.expect("Ok has a reply")),
                Verdict::Throttled { wait } => {
                    // Costs no attempt and does not count against the retry limit.
                    attempt -= 1;
                    // Tokens taken ahead were granted before the block: the lane's next
                    // requests must meet it in a take of their own, not send on them.
                    self.give_back(&set.tenant_id);
                    metrics.retry(&set.crm, "throttled");
                    if let Err(e) = self.buckets.block(&set, wait).await {
                        tracing::warn!(error = %e, "could not block the bucket");
                    }
                }
                Verdict::Transient(why) if !req.replay_safe => {
                    // It may have been applied: the connector reads before it resends.
                    return Err(Failure {
                        reason: DlqReason::RetriesExhausted,
                        detail: format!("{endpoint}: outcome unknown: {why}"),
                        status: reply.as_ref().map(|r| r.status),
                        excerpt: reply.as_ref().map(|r| excerpt(&r.body)),
                        maybe_applied: true,
                        fenced_off: vec![],
                    });
                }
                Verdict::Transient(why) => {
                    if first.elapsed() >= self.retry_limit {
                        return Err(Failure {
                            maybe_applied: false,
                            fenced_off: vec![],
                            reason: DlqReason::RetriesExhausted,
                            detail: format!(
                                "{endpoint}: still failing after {attempt} attempts over {} s: {why}",
                                first.elapsed().as_secs()
                            ),
                            status: reply.as_ref().map(|r| r.status),
                            excerpt: reply.as_ref().map(|r| excerpt(&r.body)),
                        });
                    }
                    metrics.retry(&set.crm, "transient");
                    crate::places::sleep(self.backoff.wait(attempt)).await;
                }
                // A 401: with OAuth, refresh once, then fail (CRM-APIS §5); with a token read
                // from a file, try once more if the file holds a new one (rotated just now).
                Verdict::Permanent(DlqReason::AuthFailed, _)
                    if !refreshed && reply.as_ref().is_some_and(|r| r.status == 401) && auth.retry_after_401() =>
                {
                    refreshed = true;
                    metrics.retry(&set.crm, "auth_refresh");
                    auth.invalidate(self.tokens.as_ref()).await;
                }
                Verdict::Permanent(reason, why) => {
                    return Err(Failure {
                        maybe_applied: false,
                        fenced_off: vec![],
                        reason,
                        detail: format!("{endpoint}: {why}"),
                        status: reply.as_ref().map(|r| r.status),
                        excerpt: reply.as_ref().map(|r| excerpt(&r.body)),
                    })
                }
            }
        }
    }
}

/// One attempt of a call: what is sent, where its tokens came from, how it shows in audit.
struct Attempt<'a> {
    policy: &'a dyn Policy,
    set: &'a BucketSet,
    req: &'a Request,
    endpoint: &'a str,
    /// The body as audit shows it.
    sent: &'a str,
    number: u32,
    /// `live` (writers) or `background` (the reconciler's share-keeping), for metrics.
    priority: &'static str,
}

impl Api {
    /// Sends one attempt and reads its answer: the answer classified, its latency measured,
    /// the exchange logged for audit. (The caller settles its tokens and applies what the
    /// headers said is left, in one round trip.)
    async fn send_once(
        &self,
        a: &Attempt<'_>,
        base_url: &str,
        (name, value): (reqwest::header::HeaderName, reqwest::header::HeaderValue),
        log: &mut Vec<Exchange>,
    ) -> (Verdict, Option<Reply>) {
        let (req, set, metrics) = (a.req, a.set, crm_common::telemetry::crm_metrics());
        let mut r = self.http.request(req.method.clone(), format!("{base_url}{}", req.path)).header(name, value);
        for (k, v) in &req.headers {
            r = r.header(*k, v.as_str());
        }
        if let Some(b) = &req.body {
            r = r.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.clone());
        }
        let t = Instant::now();
        let at_ms = crm_common::clock::now_ms();
        let (verdict, reply) = match r.send().await {
            Ok(resp) => {
                let reply =
                    Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.text().await.unwrap_or_default() };
                (a.policy.classify(&reply), Some(reply))
            }
            Err(e) if e.is_timeout() => (Verdict::Transient(format!("timed out after {} ms", t.elapsed().as_millis())), None),
            Err(e) => (Verdict::Transient(format!("connection failed: {e}")), None),
        };
        let status = match (&reply, &verdict) {
            (Some(r), _) => r.status.to_string(),
            (None, Verdict::Transient(why)) if why.starts_with("timed out") => "timeout".into(),
            (None, _) => "error".into(),
        };
        metrics.request(&set.crm, req.class.as_str(), status, a.priority, t.elapsed().as_secs_f64() * 1000.0);
        log.push(Exchange {
            at_ms,
            endpoint: a.endpoint.to_string(),
            status: reply.as_ref().map(|r| r.status),
            // A sensitive request's answer (contacts found by phone) is not kept either.
            excerpt: match (&reply, &req.audit_body) {
                (Some(r), None) => excerpt(&r.body),
                (Some(r), Some(_)) => format!("{} bytes, not kept: the answer holds people's phone numbers", r.body.len()),
                (None, _) => String::new(),
            },
            rate_headers: reply.as_ref().map(|r| a.policy.rate_headers(r)).unwrap_or_default(),
            stated_limits: reply.as_ref().map(|r| a.policy.stated_limits(r, a.req.class)).unwrap_or_default(),
            latency_ms: t.elapsed().as_millis() as i64,
            attempt: a.number,
            outcome: verdict.clone(),
            answered_absent: req.absent_is_answer && reply.as_ref().is_some_and(|r| r.status == 404),
            sent: a.sent.to_string(),
        });
        (verdict, reply)
    }
}

/// How long until the next midnight in a zone `tz_offset_min` east of UTC, where daily
/// limits reset (HubSpot's daily allowance, Pipedrive's token budget).
pub fn until_midnight(now_ms: i64, tz_offset_min: i32) -> Duration {
    let day = 86_400_000i64;
    let local = now_ms + i64::from(tz_offset_min) * 60_000;
    Duration::from_millis((day - local.rem_euclid(day)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midnight_in_the_accounts_zone() {
        // 2026-01-01T23:00:00Z is midnight in UTC+1: a day away there, an hour away in UTC.
        let t = 1_767_308_400_000;
        assert_eq!(until_midnight(t, 0), Duration::from_secs(3600));
        assert_eq!(until_midnight(t, 60), Duration::from_secs(86_400));
    }
}
