//! Every entry point reaches its broker with what `KAFKA_OPTIONS` says: the services, the
//! reconciler's topic reads (`crm-sync reconcile`), `crm-sync backfill` and `crm-sync dlq
//! replay`. A broker that needs TLS or SASL is reached only through options
//! (`security.protocol`, `sasl.*`, `ssl.*`); the dev broker needs neither, so here the
//! options carry the broker's address itself and `KAFKA_BOOTSTRAP_SERVERS` names a port
//! nobody listens on: a client built without the options cannot reach anything.

use crm_common::codec;
use crm_common::events::fixtures::raw_call;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::postgres::PrivateDb;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::writer_suite::HUBSPOT;
use crm_sync_tests::{bin, repo_root, Broker, RedisPrefix, MACHINE_REDIS};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

#[test]
fn every_tool_reaches_the_broker_through_kafka_options_alone() {
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    HUBSPOT.account(&sim, "acme", json!({}));
    let tenants = HUBSPOT.tenants(&sim, &["acme"], "");
    let prefix = RedisPrefix::new("kafka-options");
    let db = PrivateDb::new("kafka_options");
    let options = format!("bootstrap.servers={},session.timeout.ms=6000,heartbeat.interval.ms=500", broker.bootstrap);
    // Port 9 (discard): nothing listens.
    let via = [("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"), ("KAFKA_OPTIONS", options.as_str())];
    let contracts = repo_root().join("contracts").to_string_lossy().into_owned();
    let (secret, token) = (HUBSPOT.secret("acme"), HUBSPOT.token("acme"));
    let env: Vec<(&str, &str)> = [
        ("TENANTS_CONFIG", tenants.path()),
        ("REDIS_URL", MACHINE_REDIS),
        ("REDIS_KEY_PREFIX", prefix.0.as_str()),
        ("DATABASE_URL", db.url.as_str()),
        ("CONTRACTS_DIR", contracts.as_str()),
        ("RECONCILE_SETTLE", "0s"),
        ("PIPELINE_COMMIT_INTERVAL_MS", "100"),
        (secret.as_str(), token.as_str()),
    ]
    .into_iter()
    .chain(via)
    .collect();
    let from = crm_common::audit_store::ts(crm_common::clock::now_ms() - 600_000).to_rfc3339();

    // The services: a good call is written, a bad one dead-lettered, both stored.
    let services = [
        broker.service("normaliser", &env),
        broker.service("deduper", &env),
        broker.service("audit-sink", &env),
        HUBSPOT.writer(&broker, &tenants, &prefix, &["acme"], &via),
    ];
    let mut bad = raw_call("acme", "bad", 1);
    bad.from_number = "call me maybe".into();
    broker.produce(
        "calls.raw",
        &[
            ("acme".into(), codec::encode(&raw_call("acme", "good", 0)).unwrap(), vec![]),
            ("acme".into(), codec::encode(&bad).unwrap(), vec![]),
        ],
    );
    wait_for("the good call in HubSpot", Duration::from_secs(60), || HUBSPOT.keys(&sim, "acme").len() == 1);
    assert_eq!(
        db.wait_count(
            "SELECT count(*) FROM audit WHERE stage = 'WRITER' AND operation = 'write' AND outcome = 'SUCCEEDED'",
            1,
            Duration::from_secs(60)
        ),
        1
    );
    assert_eq!(db.wait_count("SELECT count(*) FROM dlq WHERE reason = 'INVALID_PHONE'", 1, Duration::from_secs(60)), 1);

    let crm_sync = |args: &[&str]| -> (bool, String) {
        let out = Command::new(bin("crm-sync")).args(args).envs(env.iter().copied()).output().expect("run crm-sync");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        eprintln!("crm-sync {}: {}\n{stdout}\n{stderr}", args.join(" "), out.status);
        assert!(!stderr.contains("CONFWARN"), "crm-sync {}: librdkafka warned about the configuration", args.join(" "));
        (out.status.success(), format!("{stdout}{stderr}"))
    };

    // The reconciler reads the write request behind each audit row from the write topic.
    let (ok, out) = crm_sync(&["reconcile", "--tenant", "acme", "--crm", "hubspot", "--json"]);
    assert!(ok, "reconcile could not read the write topic: {out}");
    let report: Value = serde_json::from_str(out.lines().next().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["checked"], 1, "{report}");
    assert_eq!(report["matching"], 1, "{report}");
    assert!(report["error"].is_null(), "{report}");

    // Backfill finds its range by time and re-sends both calls.
    let (ok, out) = crm_sync(&["backfill", "--tenant", "acme", "--from", &from, "--quiet"]);
    assert!(ok && out.contains("re-sent 2 calls"), "backfill: {out}");

    // dlq replay re-publishes the bad call; the normaliser dead-letters it again, counted.
    let id: String = db.query("SELECT dlq_id FROM dlq WHERE reason = 'INVALID_PHONE'")[0].get(0);
    let (ok, out) = crm_sync(&["dlq", "replay", &id]);
    assert!(ok && out.contains("replayed 1 entries"), "dlq replay: {out}");
    assert!(
        db.wait_count("SELECT count(*) FROM dlq WHERE reason = 'INVALID_PHONE' AND replay_count = 1", 1, Duration::from_secs(60)) >= 1,
        "the replayed entry never came back through the normaliser"
    );
    // The backfilled good call reached the writer again and stayed one record.
    wait_for("the backfilled call audited as a duplicate", Duration::from_secs(60), || {
        db.count("SELECT count(*) FROM audit WHERE stage = 'WRITER' AND call_id = 'good' AND outcome = 'DUPLICATE'") >= 1
    });
    assert_eq!(HUBSPOT.keys(&sim, "acme").len(), 1);
    // The options name consumer properties (session.timeout.ms, heartbeat.interval.ms): each
    // is set on the consumers only, so no producer or admin client warns about it at start.
    let mut logs = String::new();
    for p in services {
        logs.push_str(&p.log_text());
        assert!(p.terminate().success());
    }
    assert!(logs.contains("consuming") || logs.contains("starting"), "the services' logs were read: {logs}");
    assert!(!logs.contains("CONFWARN"), "librdkafka warned about the configuration: {logs}");
}
