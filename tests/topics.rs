//! `crm-sync topics check|apply` against tansu, a real Kafka-protocol broker with an admin
//! API (CreateTopics, DescribeConfigs; it has no CreatePartitions or AlterConfigs, so those
//! two are checked to fail loudly here, and to take effect on a broker that has them).

use crm_dev::Tansu;
use crm_sync_tests::{bin, repo_root};
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use std::process::Command;
use std::time::Duration;

/// deploy/topics.toml for a one-broker cluster.
fn one_broker_file(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("deploy/topics.toml"))
        .unwrap()
        .replace("replication_factor = 3", "replication_factor = 1")
        .replace("min_insync_replicas = 2", "min_insync_replicas = 1");
    let path = dir.join(format!("topics-{:x}.toml", rand::random::<u32>()));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn topics(bootstrap: &str, args: &[&str], file: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin("crm-sync"))
        .arg("topics")
        .args(args)
        .arg("--file")
        .arg(file)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// (partitions, retention.ms) of `topic` as the broker has them.
fn live(bootstrap: &str, topic: &str) -> (usize, Option<String>) {
    let admin = crm_common::kafka::Kafka::local(bootstrap).admin().unwrap();
    let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = md.topics()[0].partitions().len();
    let configs = futures::executor::block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())).unwrap();
    let retention = configs[0].as_ref().ok().and_then(|c| c.get("retention.ms").and_then(|e| e.value.clone()));
    (partitions, retention)
}

#[test]
fn topics_are_created_checked_and_never_shrunk() {
    let dir = std::env::temp_dir().join(format!("crm-sync-topics-{}", std::process::id()));
    let tansu = Tansu::start(&dir).expect("tansu (scripts/test installs it)");
    let b = tansu.bootstrap.as_str();
    let file = one_broker_file(&dir, |t| t);

    // Every topic the pipeline uses (the file must list them all; the command checks).
    let n = crm_common::config::Topics::default().all().len();

    // Nothing exists: check lists every topic to create and fails; a dry run changes nothing.
    let (ok, out) = topics(b, &["check"], &file);
    assert!(!ok && out.contains(&format!("{n} differ")) && out.matches("create:").count() == n, "{out}");
    let (ok, out) = topics(b, &["apply", "--dry-run"], &file);
    assert!(!ok || out.contains("(dry run)"), "{out}");
    let (ok, _) = topics(b, &["check"], &file);
    assert!(!ok, "a dry run created nothing");

    // Applied: every topic as the file says.
    let (ok, out) = topics(b, &["apply"], &file);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{n} changed, 0 failed, 0 drift left")), "{out}");
    assert_eq!(live(b, "calls.raw"), (12, Some((14 * 86_400_000i64).to_string())));
    assert_eq!(live(b, "sync.dlq"), (3, Some((30 * 86_400_000i64).to_string())));
    assert_eq!(live(b, "crm.writes.zoho").1, Some((30 * 86_400_000i64).to_string()));
    let (ok, out) = topics(b, &["check"], &file);
    assert!(ok && out.contains(&format!("{n} up to date, 0 differ")), "{out}");
    let (ok, out) = topics(b, &["apply"], &file);
    assert!(ok && out.contains(&format!("{n} up to date, 0 changed")), "applying again changes nothing: {out}");

    // Fewer partitions in the file: reported as drift, never applied.
    let fewer = one_broker_file(&dir, |t| t.replace("[topics.\"calls.raw\"]\npartitions = 12", "[topics.\"calls.raw\"]\npartitions = 6"));
    let (ok, out) = topics(b, &["apply"], &fewer);
    assert!(!ok && out.contains("calls.raw") && out.contains("DRIFT: 12 partitions, the file says 6"), "{out}");
    assert_eq!(live(b, "calls.raw").0, 12, "partitions are never removed");

    // More partitions and a longer retention: added and set where the broker can (tansu
    // cannot: then each failure is named and the command fails).
    let grown = one_broker_file(&dir, |t| {
        t.replace("[topics.\"meetings.raw\"]\npartitions = 6", "[topics.\"meetings.raw\"]\npartitions = 8").replace(
            "[topics.\"sync.dlq\"]\npartitions = 3\nretention = \"30d\"",
            "[topics.\"sync.dlq\"]\npartitions = 3\nretention = \"60d\"",
        )
    });
    let (ok, out) = topics(b, &["apply"], &grown);
    let (parts, retention) = (live(b, "meetings.raw").0, live(b, "sync.dlq").1);
    if ok {
        assert_eq!((parts, retention), (8, Some((60 * 86_400_000i64).to_string())), "{out}");
    } else {
        assert!(out.contains("meetings.raw") && out.contains("partitions 6 → 8: FAILED"), "{out}");
        assert!(out.contains("sync.dlq") && out.contains("retention.ms 2592000000 → 5184000000: FAILED"), "{out}");
        assert!(out.contains("2 change(s) failed"), "{out}");
    }

    // A file that leaves out a topic the pipeline uses is refused before the cluster is asked.
    let short = one_broker_file(&dir, |t| t.replace("[topics.\"sync.dlq\"]", "[topics.\"sync.dead\"]"));
    let (ok, out) = topics(b, &["check"], &short);
    assert!(!ok && out.contains("the pipeline uses sync.dlq which the file does not name"), "{out}");
    drop(tansu);
    let _ = std::fs::remove_dir_all(&dir);
}
