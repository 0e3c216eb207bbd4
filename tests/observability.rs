//! Telemetry from the running services: the normaliser, deduper and HubSpot writer export to
//! an OTLP/HTTP collector (tests/harness/otlp.rs) while calls go through, one of them bad.
//! One call's spans must join across the three services through the Kafka headers, the
//! metrics DESIGN §9 names must arrive with their labels, and the health endpoints answer.

use crm_common::codec;
use crm_common::events::fixtures::{raw_call, raw_lead};
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::lead_suite::HUBSPOT_LEADS;
use crm_sync_tests::otlp::Collector;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::writer_suite::HUBSPOT;
use crm_sync_tests::{Broker, RedisPrefix, MACHINE_REDIS};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn one_calls_spans_join_across_services_and_the_design_metrics_arrive() {
    let case = &HUBSPOT;
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    // acme takes leads too: one goes through with the calls.
    HUBSPOT_LEADS.account(&sim, "acme", json!({}));
    let tenants = HUBSPOT_LEADS.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("otel");
    let collector = Collector::start();
    let otel = collector.env();
    let (n_port, w_port) = (free_port(), free_port());
    let (n_health, w_health) = (format!("127.0.0.1:{n_port}"), format!("127.0.0.1:{w_port}"));
    let mut env: Vec<(&str, &str)> = otel.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", MACHINE_REDIS), ("REDIS_KEY_PREFIX", prefix.0.as_str())]);
    let normaliser = broker.service("normaliser", &[&env[..], &[("HEALTH_ADDR", n_health.as_str())]].concat());
    let deduper = broker.service("deduper", &env);
    let writer = case.writer(&broker, &tenants, &prefix, &["acme"], &[&env[..], &[("HEALTH_ADDR", w_health.as_str())]].concat());

    // Three good calls, each starting a trace of its own, and one whose number is no number.
    let traces: Vec<(String, String)> =
        (0..3u64).map(|i| (format!("{:032x}", 0xa11ce000u64 + i), format!("{:016x}", 0xb0b0 + i))).collect();
    let mut msgs: Vec<crm_sync_tests::Msg> = traces
        .iter()
        .enumerate()
        .map(|(i, (t, s))| {
            (
                "acme".to_string(),
                codec::encode(&raw_call("acme", &format!("t{i}"), i as i64)).unwrap(),
                vec![("traceparent".to_string(), format!("00-{t}-{s}-01"))],
            )
        })
        .collect();
    let mut bad = raw_call("acme", "bad", 9);
    bad.from_number = "call me maybe".into();
    msgs.push(("acme".into(), codec::encode(&bad).unwrap(), vec![]));
    broker.produce("calls.raw", &msgs);
    let mut lead = raw_lead("acme", "otel-lead", 0);
    lead.email = Some("otel.lead@prospect.example".into());
    lead.phone = None;
    broker.produce("leads.raw", &[("acme".to_string(), codec::encode(&lead).unwrap(), vec![])]);
    wait_for("three calls written", Duration::from_secs(60), || case.keys(&sim, "acme").len() == 3);

    // Health: live and ready while consuming.
    let http = reqwest::blocking::Client::new();
    for addr in [&n_health, &w_health] {
        for probe in ["livez", "readyz"] {
            let r = http.get(format!("http://{addr}/{probe}")).send().expect("health endpoint answers");
            let status = r.status();
            let body = r.text().unwrap();
            assert_eq!(status, 200, "{addr}/{probe}: {body}");
        }
    }

    // Each trace: the normaliser's span is the child of the producer's, the deduper's of the
    // normaliser's, the writer's of the deduper's.
    let chain = |trace: &str, root: &str| -> Result<(), String> {
        let spans: Vec<_> = collector.spans().into_iter().filter(|s| s.trace_id == trace).collect();
        let of = |svc: &str| spans.iter().find(|s| s.service == svc).cloned();
        let (Some(n), Some(d), Some(w)) = (of("normaliser"), of("deduper"), of("writer-hubspot")) else {
            return Err(format!("spans so far: {spans:?}"));
        };
        if n.parent_span_id != root || d.parent_span_id != n.span_id || w.parent_span_id != d.span_id {
            return Err(format!("broken chain from {root}: {n:?} {d:?} {w:?}"));
        }
        Ok(())
    };
    for (t, s) in &traces {
        let mut last = String::new();
        let joined = (0..60).any(|_| match chain(t, s) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                std::thread::sleep(Duration::from_millis(500));
                false
            }
        });
        assert!(joined, "trace {t}: {last}");
    }

    // The metrics, with the labels the dashboard and alerts use.
    let wanted: BTreeSet<&str> = [
        "crm_sync.messages",
        "crm_sync.processing.duration",
        "crm_sync.produced",
        "crm_sync.consumer.lag",
        "crm_sync.crm.request.duration",
        "crm_sync.token.wait",
        "crm_sync.dlq",
    ]
    .into();
    let mut missing = wanted.clone();
    for _ in 0..60 {
        let names: BTreeSet<String> = collector.points().into_iter().map(|p| p.metric).collect();
        missing = wanted.iter().copied().filter(|w| !names.contains(*w)).collect();
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(missing.is_empty(), "metrics never exported: {missing:?}");
    // Each service exports on its own interval: the names above may all have arrived from the
    // normaliser before the writer's first export, so each labelled series is waited for.
    let has = |metric: &str, service: &str, attrs: &[(&str, &str)]| {
        collector.points().iter().any(|p| {
            p.metric == metric && p.service == service && attrs.iter().all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
        })
    };
    let export = Duration::from_secs(30);
    wait_for("the bad call's dead letter, by reason and kind", export, || {
        has("crm_sync.dlq", "normaliser", &[("stage", "NORMALISER"), ("reason", "INVALID_PHONE"), ("activity", "call")])
    });
    wait_for("writer throughput by stage and kind", export, || {
        has("crm_sync.messages", "writer-hubspot", &[("stage", "writer-hubspot"), ("activity", "call")])
    });
    // The claim store is new to this writer, so the lead is recovered first: a wait for any
    // lost write, and HubSpot's search lag before the person is searched for.
    wait_for("a lead's new person, by CRM and result", Duration::from_secs(90), || {
        has("crm_sync.lead.people", "writer-hubspot", &[("crm", "hubspot"), ("result", "created")])
    });
    wait_for("normaliser throughput by kind, from its input topic", export, || {
        has("crm_sync.messages", "normaliser", &[("activity", "call")])
    });
    wait_for("CRM latency by CRM and priority", export, || {
        has("crm_sync.crm.request.duration", "writer-hubspot", &[("crm", "hubspot"), ("priority", "live")])
    });
    wait_for("statuses are labels", export, || {
        collector
            .points()
            .iter()
            .any(|p| p.metric == "crm_sync.crm.request.duration" && p.attributes.get("status").is_some_and(|s| s.starts_with('2')))
    });
    // librdkafka reports statistics every 5 s.
    let writer_lag = || {
        collector.points().iter().any(|p| {
            p.metric == "crm_sync.consumer.lag"
                && p.service == "writer-hubspot"
                && p.attributes.get("topic").map(String::as_str) == Some("crm.writes.hubspot")
                && p.attributes.contains_key("partition")
        })
    };
    wait_for("the writer's lag per partition", Duration::from_secs(30), writer_lag);

    for p in [normaliser, deduper, writer] {
        assert!(p.terminate().success());
    }
}

/// Readiness follows the writer's life: 503 "starting" is over once it reads, and after
/// SIGTERM, while a lane still waits on its tenant's (shut) bucket, /readyz says "draining"
/// and /livez still answers; then the process exits cleanly.
#[test]
fn readiness_says_draining_after_sigterm_while_work_finishes() {
    let case = &HUBSPOT;
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    case.account(&sim, "acme", json!({}));
    let tenants = case.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("drain");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut writer = case.writer(&broker, &tenants, &prefix, &["acme"], &[("HEALTH_ADDR", addr.as_str())]);
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let probe =
        |path: &str| http.get(format!("http://{addr}/{path}")).send().ok().map(|r| (r.status().as_u16(), r.text().unwrap_or_default()));
    wait_for("ready", Duration::from_secs(30), || probe("readyz").is_some_and(|(s, _)| s == 200));
    // Ready means consuming; partitions come with the group's first join.
    wait_for("partitions assigned", Duration::from_secs(30), || writer.log_text().contains("partitions assigned"));

    // A call whose lane waits on a shut bucket, so the drain has work to wait for.
    crm_sync_tests::writer::block_bucket(&prefix, "acme", "hubspot", Duration::from_secs(8));
    broker.produce(&case.topic(), &[case.request("acme", "d1", 1)]);
    std::thread::sleep(Duration::from_secs(2));
    writer.signal(libc::SIGTERM);
    let mut saw = None;
    for _ in 0..40 {
        if let Some((503, body)) = probe("readyz") {
            saw = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = saw.expect("/readyz turned 503 after SIGTERM");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(probe("livez").map(|(s, _)| s), Some(200), "still live while draining");
    assert!(writer.child.wait().unwrap().success(), "exits cleanly after the drain");
    assert_eq!(case.keys(&sim, "acme").len(), 1, "the waiting call was finished in the drain");
}
