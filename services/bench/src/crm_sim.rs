//! `bench crm-sim`: how fast the simulator answers, so writer benchmarks know it is not their
//! bottleneck, and that upserts stay flat as an account fills (value indexes). Drives the
//! release `crm-sim` over HTTP with many requests in flight; limits are raised out of the way.

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Phase {
    label: String,
    requests: usize,
    records: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    failures: usize,
}

impl Phase {
    fn print(&mut self) {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| {
            self.latencies_us
                .get(((self.latencies_us.len() as f64 * p) as usize).min(self.latencies_us.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{:<44} {:>7} req {:>9.0} req/s {:>10.0} records/s   p50 {:>6.2} ms  p99 {:>6.2} ms  failures {}",
            self.label,
            self.requests,
            self.requests as f64 / secs,
            self.records as f64 / secs,
            pct(0.50) as f64 / 1000.0,
            pct(0.99) as f64 / 1000.0,
            self.failures
        );
    }
}

/// One request to send: method, URL, headers, JSON body.
type Req = (reqwest::Method, String, Vec<(&'static str, String)>, Value);

async fn drive(http: &reqwest::Client, label: String, reqs: Vec<Req>, per_request: usize, concurrency: usize) -> Phase {
    let n = reqs.len();
    let start = Instant::now();
    let results: Vec<(u64, bool)> = stream::iter(reqs)
        .map(|(m, url, headers, body)| {
            let http = http.clone();
            async move {
                let t = Instant::now();
                let mut rb = http.request(m, url).json(&body);
                for (k, v) in headers {
                    rb = rb.header(k, v);
                }
                let ok = matches!(rb.send().await, Ok(r) if r.status().is_success());
                (t.elapsed().as_micros() as u64, ok)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let failures = results.iter().filter(|(_, ok)| !ok).count();
    Phase { label, requests: n, records: n * per_request, elapsed, latencies_us: results.into_iter().map(|(l, _)| l).collect(), failures }
}

pub fn run(requests: usize, records: usize, concurrency: usize) -> anyhow::Result<()> {
    let (url, mut child) = crm_dev::spawn_crm_sim(&crm_dev::sibling_binary("crm-sim")?, None, true)?;
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
        let admin = |body: Value| {
            let http = http.clone();
            let url = url.clone();
            async move { http.post(format!("{url}/admin/accounts")).json(&body).send().await?.error_for_status().map(|_| ()) }
        };
        admin(json!({"crm": "hubspot", "account": "bench", "plan": "enterprise", "search_lag_ms": 0,
            "limits": {"burst_per_10s": 1_000_000_000u64, "daily": 1_000_000_000u64, "search_per_s": 1_000_000_000u64},
            "tokens": [{"token": "hs", "kind": "static"}], "fields": {"calls": {"crm_sync_key": {"unique": true}}},
            "key_field": {"object": "calls", "field": "crm_sync_key"}}))
        .await?;
        admin(json!({"crm": "salesforce", "account": "bench", "limits": {"daily_requests": 1_000_000_000u64},
            "tokens": [{"token": "sf", "kind": "oauth", "expires_in_s": 86400}], "fields": {"Task": {"CallExtId__c": {"external_id": true, "unique": true}}}}))
        .await?;
        println!("crm-sim at {url}; {concurrency} requests in flight");
        let hs = || vec![("authorization", "Bearer hs".to_string())];
        let call = |k: String| json!({"properties": {"hs_timestamp": "2025-01-15T10:30:00Z", "hs_call_title": "bench", "hs_call_duration": "1000", "crm_sync_key": k}, "associations": []});

        let singles = (0..requests).map(|i| (reqwest::Method::POST, format!("{url}/hubspot/crm/v3/objects/calls"), hs(), call(format!("s{i}")))).collect();
        drive(&http, "HubSpot POST /calls (one record)".into(), singles, 1, concurrency).await.print();

        // Upserts of 100 in batches until `records` exist; first and last tenth timed apart.
        let batches = records.div_ceil(100);
        let tenth = (batches / 10).max(1);
        let upsert = |b: usize| {
            let inputs: Vec<Value> = (0..100).map(|j| json!({"id": format!("u{}", b * 100 + j), "idProperty": "crm_sync_key", "properties": {"hs_timestamp": "1736937000000", "hs_call_title": "bench"}})).collect();
            (reqwest::Method::POST, format!("{url}/hubspot/crm/v3/objects/calls/batch/upsert"), hs(), json!({"inputs": inputs}))
        };
        drive(&http, format!("HubSpot batch/upsert ×100, first {} records", tenth * 100), (0..tenth).map(upsert).collect(), 100, concurrency).await.print();
        drive(&http, "  … filling".into(), (tenth..batches - tenth).map(upsert).collect(), 100, concurrency).await;
        drive(&http, format!("HubSpot batch/upsert ×100, last {} (of {})", tenth * 100, batches * 100), (batches - tenth..batches).map(upsert).collect(), 100, concurrency).await.print();
        drive(&http, "HubSpot batch/upsert ×100, same keys again".into(), (0..tenth).map(upsert).collect(), 100, concurrency).await.print();

        let search = (0..requests.min(200))
            .map(|i| (reqwest::Method::POST, format!("{url}/hubspot/crm/v3/objects/calls/search"), hs(), json!({"filterGroups": [{"filters": [{"propertyName": "crm_sync_key", "operator": "EQ", "value": format!("s{i}")}]}]})))
            .collect();
        drive(&http, format!("HubSpot search (scans {} calls)", requests + batches * 100), search, 1, concurrency).await.print();

        let sf = |b: usize| {
            let records: Vec<Value> = (0..200).map(|j| json!({"attributes": {"type": "Task"}, "CallExtId__c": format!("t{}", b * 200 + j), "Subject": "Call", "TaskSubtype": "Call"})).collect();
            (reqwest::Method::PATCH, format!("{url}/salesforce/services/data/v66.0/composite/sobjects/Task/CallExtId__c"), vec![("authorization", "Bearer sf".to_string())], json!({"allOrNone": false, "records": records}))
        };
        drive(&http, "Salesforce collection upsert ×200".into(), (0..records.div_ceil(200)).map(sf).collect(), 200, concurrency).await.print();
        anyhow::Ok(())
    });
    let rss = crate::peak_rss_kib(pid);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    result?;
    if let Some(kib) = rss {
        println!("crm-sim peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}
