//! Tenants onboarded and removed while the pipeline runs: the normaliser, the deduper and a
//! writer as separate processes, each reading its own copy of the tenants file (as pods each
//! have their own ConfigMap volume, updated at different times), against the broker, Redis
//! and crm-sim.

use crm_common::codec;
use crm_common::events::fixtures::raw_call;
use crm_common::events::{DeadLetter, DlqReason, Stage};
use crm_sync_tests::crm_sim::CrmSim;
use crm_sync_tests::writer::wait_for;
use crm_sync_tests::writer_suite::HUBSPOT;
use crm_sync_tests::{Broker, Msg, RedisPrefix, TempFile, MACHINE_REDIS};
use serde_json::json;
use std::time::{Duration, Instant};

fn raw(tenant: &str, id: &str) -> Msg {
    (tenant.into(), codec::encode(&raw_call(tenant, id, 1)).unwrap(), vec![])
}

fn dead_letters(broker: &Broker, n: usize, timeout: Duration) -> Vec<DeadLetter> {
    broker.read(&["sync.dlq"], n, timeout).iter().map(|m| codec::decode(m.payload.as_deref().unwrap()).unwrap()).collect()
}

#[test]
fn a_tenant_added_reaches_the_crm_through_stages_reloading_apart_and_one_removed_stops() {
    let broker = Broker::start(2);
    let sim = CrmSim::start();
    for t in ["acme", "globex"] {
        HUBSPOT.account(&sim, t, json!({}));
    }
    let acme_only = std::fs::read_to_string(HUBSPOT.tenants(&sim, &["acme"], "").path()).unwrap();
    let both = std::fs::read_to_string(HUBSPOT.tenants(&sim, &["acme", "globex"], "").path()).unwrap();
    let (n_file, d_file, w_file) =
        (TempFile::new("tenants.toml", &acme_only), TempFile::new("tenants.toml", &acme_only), TempFile::new("tenants.toml", &acme_only));
    let prefix = RedisPrefix::new("reload");
    let quick = ("TENANTS_RELOAD_INTERVAL", "200ms");
    let normaliser = broker.service("normaliser", &[("TENANTS_CONFIG", n_file.path()), quick]);
    let deduper = broker.service(
        "deduper",
        &[
            ("TENANTS_CONFIG", d_file.path()),
            quick,
            ("TENANT_WAIT", "60s"),
            ("REDIS_URL", MACHINE_REDIS),
            ("REDIS_KEY_PREFIX", prefix.0.as_str()),
        ],
    );
    // The prefix is a new claim store for both tenants (else globex's first write, of a
    // call from January, is looked up in the CRM first, after the late-write horizon).
    let target = crm_common::redis_conn::RedisTarget::new(MACHINE_REDIS, false).unwrap();
    prefix.fresh_claim_store_on(&target, &["acme".to_string(), "globex".to_string()]);
    // The writer checks its file only on SIGHUP or when it meets a tenant it does not know.
    let writer =
        HUBSPOT.writer(&broker, &w_file, &prefix, &["acme", "globex"], &[("TENANTS_RELOAD_INTERVAL", "1h"), ("TENANT_WAIT", "60s")]);

    broker.produce("calls.raw", &[raw("acme", "a1")]);
    wait_for("acme's first call in HubSpot", Duration::from_secs(60), || HUBSPOT.keys(&sim, "acme").len() == 1);

    // globex is added: the normaliser and the deduper pick it up within their interval; the
    // writer's volume has not been updated yet.
    std::fs::write(n_file.path(), &both).unwrap();
    std::fs::write(d_file.path(), &both).unwrap();
    wait_for("the normaliser and the deduper reloaded", Duration::from_secs(20), || {
        normaliser.log_text().contains("TENANTS_CONFIG reloaded") && deduper.log_text().contains("TENANTS_CONFIG reloaded")
    });
    broker.produce("calls.raw", &[raw("globex", "g1")]);
    wait_for("the writer waiting for its file to name globex", Duration::from_secs(30), || writer.log_text().contains("waiting for it"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(HUBSPOT.keys(&sim, "globex").is_empty(), "nothing written for globex before the writer knows it");
    assert!(dead_letters(&broker, 1, Duration::from_secs(1)).is_empty(), "nothing dead-lettered while the writer waits");
    std::fs::write(w_file.path(), &both).unwrap();
    wait_for("globex's call in HubSpot", Duration::from_secs(30), || HUBSPOT.keys(&sim, "globex").len() == 1);
    assert!(writer.log_text().contains("waited for TENANTS_CONFIG to name a tenant"), "{}", writer.log_text());

    // A bad file at the deduper changes nothing there: acme's calls still flow.
    std::fs::write(d_file.path(), format!("{both}\n[tenants.broken]\ndefault_region = \"XX\"\n")).unwrap();
    wait_for("the deduper refusing the file", Duration::from_secs(20), || deduper.log_text().contains("refused"));
    assert!(deduper.log_text().contains("tenant 'broken'"), "the refusal says why: {}", deduper.log_text());
    broker.produce("calls.raw", &[raw("acme", "a2"), raw("globex", "g2")]);
    wait_for("a2 and g2 in HubSpot", Duration::from_secs(60), || {
        HUBSPOT.keys(&sim, "acme").len() == 2 && HUBSPOT.keys(&sim, "globex").len() == 2
    });

    // globex is removed everywhere; the writer is told by SIGHUP.
    let reloads = writer.log_text().matches("TENANTS_CONFIG reloaded").count();
    for f in [&n_file, &d_file, &w_file] {
        std::fs::write(f.path(), &acme_only).unwrap();
    }
    writer.signal(libc::SIGHUP);
    wait_for("the writer reloading on SIGHUP", Duration::from_secs(20), || {
        writer.log_text().matches("TENANTS_CONFIG reloaded").count() > reloads
    });
    assert!(writer.log_text().contains("SIGHUP"), "{}", writer.log_text());
    wait_for("the normaliser and the deduper dropped globex", Duration::from_secs(20), || {
        normaliser.log_text().contains("removed=[\"globex\"]") && deduper.log_text().contains("removed=[\"globex\"]")
    });
    // A new call from globex stops at the normaliser; a write fanned out before the removal
    // is dead-lettered by the writer at once, not after TENANT_WAIT.
    let started = Instant::now();
    broker.produce("calls.raw", &[raw("globex", "g3")]);
    broker.produce(&HUBSPOT.topic(), &[HUBSPOT.request("globex", "g4", 1)]);
    let dead = dead_letters(&broker, 2, Duration::from_secs(40));
    assert!(started.elapsed() < Duration::from_secs(40));
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert!(dead.iter().all(|d| d.reason == DlqReason::TenantNotConfigured && d.tenant_id == "globex"), "{dead:#?}");
    let by = |stage: Stage| dead.iter().find(|d| d.stage == stage).unwrap_or_else(|| panic!("no dead letter from {stage:?}: {dead:#?}"));
    assert!(by(Stage::Normaliser).detail.contains("was removed from TENANTS_CONFIG"), "{:?}", by(Stage::Normaliser).detail);
    assert!(by(Stage::Writer).detail.contains("lost its hubspot connection"), "{:?}", by(Stage::Writer).detail);
    assert!(started.elapsed() < Duration::from_secs(30), "the writer did not wait out TENANT_WAIT for a removed tenant");
    assert_eq!(HUBSPOT.keys(&sim, "globex").len(), 2, "nothing more written for globex");

    // acme is untouched by all of it.
    broker.produce("calls.raw", &[raw("acme", "a3")]);
    wait_for("a3 in HubSpot", Duration::from_secs(60), || HUBSPOT.keys(&sim, "acme").len() == 3);
    for p in [normaliser, deduper, writer] {
        assert!(p.terminate().success());
    }
}
