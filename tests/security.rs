//! Credentials and phone numbers where they must not be, after a real run; and tenants kept
//! apart. Everything runs as processes against the dev broker, crm-sim, the machine's Redis
//! and a PostgreSQL database of the test's own.

use crm_common::codec;
use crm_common::events::fixtures::raw_call;
use crm_common::events::*;
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::postgres::PrivateDb;
use crm_sync_tests::writer::{block_bucket, wait_for};
use crm_sync_tests::writer_suite::{Case, HUBSPOT, PIPEDRIVE, SALESFORCE, ZOHO};
use crm_sync_tests::{bin, repo_root, Broker, Proc, RedisPrefix, TempFile, MACHINE_REDIS};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// Salesforce and Zoho connect with OAuth here (client secret, refresh token, minted access
/// tokens); HubSpot and Pipedrive with a static token.
fn oauth(case: &Case) -> bool {
    matches!(case.crm, Crm::Salesforce | Crm::Zoho)
}

/// (secret name, secret value, the credentials in it) for `tenant` at `case`'s CRM.
fn credentials(case: &Case, sim: &CrmSim, tenant: &str) -> (String, String, Vec<String>) {
    if oauth(case) {
        let (access, refresh, client_secret) = (
            format!("{}-access-{tenant}", case.name()),
            format!("{}-refresh-{tenant}", case.name()),
            format!("{}-client-secret-{tenant}", case.name()),
        );
        case.account(
            sim,
            tenant,
            json!({"tokens": [{
                "token": access, "kind": "oauth", "refresh_token": refresh,
                "client_id": "crm-sync-app", "client_secret": client_secret, "expires_in_s": 1800
            }]}),
        );
        let value = format!(r#"{{"client_id": "crm-sync-app", "client_secret": "{client_secret}", "refresh_token": "{refresh}"}}"#);
        (case.secret(tenant), value, vec![access, refresh, client_secret])
    } else {
        case.account(sim, tenant, json!({}));
        (case.secret(tenant), case.token(tenant), vec![case.token(tenant)])
    }
}

/// One tenants file for several CRMs: the first case's file whole, the others' CRM tables.
fn tenants_file(sim: &CrmSim, cases: &[&Case], tenant: &str) -> TempFile {
    let mut text = String::new();
    for (i, case) in cases.iter().enumerate() {
        let one = std::fs::read_to_string(case.tenants(sim, &[tenant], "").path()).unwrap();
        let part = if i == 0 { one.as_str() } else { &one[one.find(&format!("[tenants.{tenant}.crms.")).unwrap()..] };
        text.push_str(part);
        text.push('\n');
    }
    TempFile::new("tenants.toml", &text)
}

#[test]
fn after_a_full_run_no_credential_or_unmasked_number_is_anywhere() {
    let cases = [&HUBSPOT, &SALESFORCE, &ZOHO, &PIPEDRIVE];
    let broker = Broker::start(2);
    let sim = CrmSim::start();
    let db = PrivateDb::new("security");
    let prefix = RedisPrefix::new("security");
    let tenant = "acme";
    let mut secrets = vec![];
    let mut known_credentials = vec![];
    for case in cases {
        let (name, value, creds) = credentials(case, &sim, tenant);
        secrets.push((case, name, value));
        known_credentials.extend(creds);
    }
    let tenants = tenants_file(&sim, &cases, tenant);
    let env = [("TENANTS_CONFIG", tenants.path()), ("REDIS_URL", MACHINE_REDIS), ("REDIS_KEY_PREFIX", prefix.0.as_str())];
    let mut procs: Vec<Proc> = vec![
        broker.service("normaliser", &env),
        broker.service("deduper", &env),
        broker.service(
            "audit-sink",
            &[("DATABASE_URL", db.url.as_str()), ("PIPELINE_COMMIT_INTERVAL_MS", "100"), ("TENANTS_CONFIG", "/dev/null")],
        ),
    ];
    // Each writer gets only its own CRM's secret, as in deploy/k8s.
    for (case, name, value) in &secrets {
        procs.push(case.writer(&broker, &tenants, &prefix, &[], &[(name.as_str(), value.as_str())]));
    }

    // Eight calls from numbers the tenant's audit must not show, and one that is no number.
    let numbers: Vec<String> = (0..8).map(|i| format!("(415) 555-01{}", 20 + i)).collect();
    let mut msgs: Vec<crm_sync_tests::Msg> = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut ev = raw_call(tenant, &format!("s{i}"), i as i64);
            ev.from_number = n.clone();
            (tenant.to_string(), codec::encode(&ev).unwrap(), vec![])
        })
        .collect();
    let mut invalid = raw_call(tenant, "s-invalid", 9);
    invalid.from_number = "555 0199 12".into();
    msgs.push((tenant.into(), codec::encode(&invalid).unwrap(), vec![]));
    broker.produce("calls.raw", &msgs);
    for case in cases {
        wait_for(&format!("eight calls in {}", case.name()), Duration::from_secs(90), || case.keys(&sim, tenant).len() == numbers.len());
    }
    wait_for("the writes stored", Duration::from_secs(30), || {
        db.count("SELECT count(*) FROM audit WHERE stage = 'WRITER' AND operation = 'write' AND outcome = 'SUCCEEDED'")
            == 4 * numbers.len() as i64
    });

    // An operator's commands run too, with every secret in their environment.
    let mut cli_env: Vec<(String, String)> = vec![
        ("KAFKA_BOOTSTRAP_SERVERS".into(), broker.bootstrap.clone()),
        ("TENANTS_CONFIG".into(), tenants.path().into()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), MACHINE_REDIS.into()),
        ("REDIS_KEY_PREFIX".into(), prefix.0.clone()),
        ("CONTRACTS_DIR".into(), repo_root().join("contracts").to_string_lossy().into_owned()),
        ("RECONCILE_SETTLE".into(), "0s".into()),
    ];
    cli_env.extend(secrets.iter().map(|(_, n, v)| (n.clone(), v.clone())));
    let run = |args: &[&str]| -> String {
        let out = Command::new(bin("crm-sync")).args(args).envs(cli_env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).output().unwrap();
        assert!(out.status.success(), "crm-sync {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let mut outputs = run(&["reconcile", "--tenant", tenant, "--json"]) + &run(&["trace", "s1", "--tenant", tenant]);
    // The DLQ holds the original message (numbers included) in its payload, for replay; what
    // people read of it (its listing, details and the CRM's answers) is masked as the audit is.
    let dlq_listing = run(&["dlq", "list"]);
    assert!(dlq_listing.contains("INVALID_PHONE"), "{dlq_listing}");
    assert!(outputs.contains("s1"), "trace found the call: {outputs}");

    // Every credential crm-sim issued (access tokens minted on refresh included).
    for case in cases {
        let t = sim.admin("GET", &format!("/accounts/{}/{tenant}/tokens", case.name()), None);
        for kind in ["access_tokens", "refresh_tokens"] {
            known_credentials.extend(t[kind].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
        }
    }
    known_credentials.sort();
    known_credentials.dedup();
    assert!(known_credentials.len() >= 8, "{known_credentials:?}");

    for p in procs.drain(..) {
        let log = p.log_text();
        let name = p.name.clone();
        assert!(p.terminate().success(), "{name} exits cleanly");
        outputs.push_str(&format!("\n--- {name}\n{log}"));
    }
    let topics = crm_common::config::Topics::default().all();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let messages = broker.reader(&topic_refs).read_until(Duration::from_secs(3), |_| false);
    assert!(messages.len() > 50, "read back {} messages", messages.len());
    let text_of = |m: &crm_common::kafka::InMessage| {
        format!(
            "{} {:?} {}",
            String::from_utf8_lossy(m.payload.as_deref().unwrap_or_default()),
            m.headers.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect::<Vec<_>>(),
            m.key_str().unwrap_or_default()
        )
    };
    let audit_rows: Vec<String> = db.query("SELECT row_to_json(a)::text FROM audit a").iter().map(|r| r.get::<_, String>(0)).collect();
    let dlq_rows: Vec<String> = db.query("SELECT row_to_json(d)::text FROM dlq d").iter().map(|r| r.get::<_, String>(0)).collect();
    assert!(audit_rows.len() > 30 && !dlq_rows.is_empty(), "{} audit rows, {} dlq rows", audit_rows.len(), dlq_rows.len());

    // Logs written to a file (not a terminal) are plain text: no ANSI colour codes.
    assert!(!outputs.contains('\u{1b}'), "colour codes in a log that is not a terminal");

    // No credential anywhere: logs, command output, any topic, the audit store.
    for c in &known_credentials {
        assert!(!outputs.contains(c.as_str()) && !dlq_listing.contains(c.as_str()), "credential {c} in logs or command output");
        for m in &messages {
            assert!(!text_of(m).contains(c.as_str()), "credential {c} on {}", m.topic);
        }
        for row in audit_rows.iter().chain(&dlq_rows) {
            assert!(!row.contains(c.as_str()), "credential {c} in the audit store: {row}");
        }
    }

    // Masking is on for this tenant: no number in its audit trail (topic and store) or logs,
    // in any of the forms it travels in.
    let forms: Vec<String> = numbers
        .iter()
        .flat_map(|n| {
            let digits: String = n.chars().filter(char::is_ascii_digit).collect();
            [n.clone(), format!("+1{digits}"), digits, "555 0199 12".into(), "555019912".into()]
        })
        .collect();
    let audit_topic: Vec<String> = messages
        .iter()
        .filter(|m| m.topic == "sync.audit")
        .map(|m| format!("{:?}", codec::decode::<AuditRecord>(m.payload.as_deref().unwrap()).unwrap()))
        .collect();
    for f in &forms {
        assert!(!outputs.contains(f.as_str()), "number {f} unmasked in a log or command output");
        for a in &audit_topic {
            assert!(!a.contains(f.as_str()), "number {f} unmasked on sync.audit: {a}");
        }
        for row in &audit_rows {
            assert!(!row.contains(f.as_str()), "number {f} unmasked in the audit table: {row}");
        }
    }
    let dead: Vec<DeadLetter> =
        messages.iter().filter(|m| m.topic == "sync.dlq").map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect();
    let invalid = dead.iter().find(|d| d.call_id.as_deref() == Some("s-invalid")).expect("the invalid number is dead-lettered");
    assert_eq!(codec::decode::<CallEvent>(&invalid.payload).unwrap().from_number, "555 0199 12", "the payload is kept whole for replay");
    let dlq_text: Vec<String> = db
        .query("SELECT detail || ' ' || coalesce(crm_response_excerpt, '') FROM dlq")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .chain(dead.iter().map(|d| format!("{} {}", d.detail, d.crm_response_excerpt.clone().unwrap_or_default())))
        .collect();
    for f in &forms {
        assert!(!dlq_listing.contains(f.as_str()), "number {f} unmasked in crm-sync dlq list: {dlq_listing}");
        for t in &dlq_text {
            assert!(!t.contains(f.as_str()), "number {f} unmasked in a dead letter's detail or excerpt: {t}");
        }
    }
    // Redis: the writers cached the contacts they matched, under names that hold no number
    // (a keyed hash), whatever the tenant's masking.
    let keys = prefix.keys();
    assert!(keys.iter().any(|k| k.contains(":contact:")), "contacts were cached: {keys:?}");
    for f in &forms {
        for k in &keys {
            assert!(!k.contains(f.as_str()), "number {f} in the Redis key {k}");
        }
    }
}

#[test]
fn one_tenants_writes_never_use_another_tenants_credentials_or_bucket() {
    let case = &HUBSPOT;
    let broker = Broker::start(1);
    let sim = CrmSim::start();
    for t in ["acme", "globex", "initech"] {
        case.account(&sim, t, json!({}));
    }
    let tenants = case.tenants(&sim, &["acme", "globex", "initech"], "");
    let prefix = RedisPrefix::new("isolation");
    // acme's bucket is shut for a while; initech's secret is not there at all.
    block_bucket(&prefix, "acme", "hubspot", Duration::from_secs(20));
    let writer = case.writer(&broker, &tenants, &prefix, &["acme", "globex"], &[]);
    let msgs: Vec<crm_sync_tests::Msg> =
        ["acme", "globex", "initech"].iter().flat_map(|t| (0..5).map(move |i| case.request(t, &format!("c{i}"), 1))).collect();
    broker.produce(&case.topic(), &msgs);

    wait_for("globex's five written", Duration::from_secs(60), || case.keys(&sim, "globex").len() == 5);
    let letters = || -> Vec<DeadLetter> {
        broker
            .reader(&["sync.dlq"])
            .read_until(Duration::from_secs(1), |_| false)
            .iter()
            .map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap())
            .collect()
    };
    wait_for("initech's five dead-lettered", Duration::from_secs(30), || {
        letters().iter().filter(|d| d.tenant_id == "initech").count() == 5
    });
    let requests = |t: &str| -> u64 {
        let s: Value = sim.state("hubspot", t);
        s["counters"]
            .as_object()
            .map_or(0, |c| c.values().flat_map(|v| v.as_object().unwrap().values().map(|n| n.as_u64().unwrap_or(0))).sum())
    };
    // While its bucket is shut nothing was sent with acme's token, for anyone.
    assert_eq!(requests("acme"), 0, "acme's credentials were used while its bucket was shut: {}", sim.state("hubspot", "acme")["counters"]);
    assert!(case.keys(&sim, "acme").is_empty());
    assert_eq!(requests("initech"), 0, "initech has no credentials, so nothing reached its account");
    for d in letters().iter().filter(|d| d.tenant_id == "initech") {
        assert_eq!(d.reason, DlqReason::AuthFailed, "{}", d.detail);
        assert!(d.detail.contains(&case.secret("initech")), "names the missing secret: {}", d.detail);
    }
    // Each account holds its own tenant's records only.
    assert!(case.keys(&sim, "globex").keys().all(|k| k.starts_with("globex:")));
    wait_for("acme's five written once its bucket opens", Duration::from_secs(60), || case.keys(&sim, "acme").len() == 5);
    assert!(case.keys(&sim, "acme").keys().all(|k| k.starts_with("acme:")));
    assert!(case.keys(&sim, "initech").is_empty());
    assert!(writer.terminate().success());
}
