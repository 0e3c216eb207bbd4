//! `crm-sync topics check|apply`: the pipeline's topics as code. `deploy/topics.toml` says
//! what each topic must be (partitions, replication factor, retention, cleanup policy,
//! min.insync.replicas); `check` compares the cluster with it and `apply` makes the cluster
//! so, through the Kafka admin API, where that can be done in place:
//!
//! - a missing topic is created with everything the file says;
//! - partitions are only ever added: a topic cannot lose partitions, and removing some would
//!   move tenants' keys (their order) to other partitions, so more than the file says is
//!   reported, not "fixed";
//! - the three configs the file owns are set where they differ (AlterConfigs sets a topic's
//!   configs as a whole: any other per-topic config set by hand is reset by an apply that
//!   changes one of them; put it in the file);
//! - a replication factor that differs is reported: changing it is a partition reassignment
//!   (kafka-reassign-partitions), not a config.
//!
//! The file is checked before anything is asked of the cluster, and must name every topic
//! the pipeline uses (with the TOPIC_* overrides the services are given).

use crm_common::config::{KafkaArgs, Topics};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    cmd: TopicsCmd,
}

#[derive(Debug, clap::Subcommand)]
enum TopicsCmd {
    /// Compare the cluster's topics with the file and list every difference; exits 1 when
    /// there is one (for a CI job or a cron).
    Check(Opts),
    /// Create missing topics, add partitions and set configs as the file says; report what
    /// cannot be changed in place. Exits 1 when a change failed or drift is left.
    Apply {
        #[command(flatten)]
        opts: Opts,
        /// Say what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Opts {
    /// The declarative topics file.
    #[arg(long, env = "TOPICS_FILE", default_value = "deploy/topics.toml")]
    file: PathBuf,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: Topics,
}

/// The file as written: `[defaults]` and one `[topics."<name>"]` table per topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    #[serde(default)]
    defaults: Settings,
    topics: BTreeMap<String, Settings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    min_insync_replicas: Option<i32>,
    /// `delete`, `compact` or `compact,delete`.
    cleanup_policy: Option<String>,
    /// A duration ("14d", "36h") or `forever`.
    retention: Option<String>,
}

/// What one topic must be, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// The topic configs the file owns, by their Kafka names.
    pub configs: BTreeMap<&'static str, String>,
}

/// The configs `topics.toml` owns.
const OWNED: [&str; 3] = ["retention.ms", "cleanup.policy", "min.insync.replicas"];

/// Parses and checks `text`; `needed` are the topics the pipeline uses, each of which the
/// file must name.
pub fn parse(text: &str, needed: &[String]) -> anyhow::Result<Vec<TopicSpec>> {
    let file: TopicsFile = toml::from_str(text)?;
    let mut specs = vec![];
    for (name, own) in &file.topics {
        let d = &file.defaults;
        let what = |key: &str| format!("topics.\"{name}\".{key}");
        let partitions = own.partitions.or(d.partitions).ok_or_else(|| anyhow::anyhow!("{}: missing", what("partitions")))?;
        anyhow::ensure!(partitions >= 1, "{}: {partitions} (at least 1)", what("partitions"));
        let rf = own.replication_factor.or(d.replication_factor).unwrap_or(1);
        anyhow::ensure!(rf >= 1, "{}: {rf} (at least 1)", what("replication_factor"));
        let min_isr = own.min_insync_replicas.or(d.min_insync_replicas).unwrap_or(1);
        anyhow::ensure!(
            (1..=rf).contains(&min_isr),
            "{}: {min_isr}, with replication_factor {rf} (between 1 and it: more and no write is ever acknowledged)",
            what("min_insync_replicas")
        );
        let cleanup = own.cleanup_policy.clone().or(d.cleanup_policy.clone()).unwrap_or_else(|| "delete".into());
        anyhow::ensure!(
            ["delete", "compact", "compact,delete"].contains(&cleanup.as_str()),
            "{}: {cleanup:?} (delete, compact or \"compact,delete\")",
            what("cleanup_policy")
        );
        let retention = own.retention.clone().or(d.retention.clone()).ok_or_else(|| anyhow::anyhow!("{}: missing", what("retention")))?;
        let retention_ms = match retention.as_str() {
            "forever" => -1,
            r => {
                let d = humantime::parse_duration(r).map_err(|e| anyhow::anyhow!("{}: {r:?}: {e}", what("retention")))?;
                anyhow::ensure!(!d.is_zero(), "{}: must be longer than zero", what("retention"));
                d.as_millis() as i64
            }
        };
        let configs = BTreeMap::from([
            ("retention.ms", retention_ms.to_string()),
            ("cleanup.policy", cleanup),
            ("min.insync.replicas", min_isr.to_string()),
        ]);
        specs.push(TopicSpec { name: name.clone(), partitions, replication_factor: rf, configs });
    }
    let missing: Vec<&String> = needed.iter().filter(|t| !file.topics.contains_key(*t)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the pipeline uses {} which the file does not name: add {}",
        missing.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
        if missing.len() == 1 { "it" } else { "them" }
    );
    Ok(specs)
}

/// A topic as the cluster has it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveTopic {
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: HashMap<String, String>,
}

/// One thing to do (or that cannot be done) for one topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Create,
    AddPartitions {
        from: i32,
        to: i32,
    },
    SetConfig {
        key: &'static str,
        from: Option<String>,
        to: String,
    },
    /// A difference `apply` leaves, with why.
    Drift(String),
}

/// What it takes to make `live` (None: no such topic) what `spec` says.
pub fn plan(spec: &TopicSpec, live: Option<&LiveTopic>) -> Vec<Step> {
    let Some(live) = live else { return vec![Step::Create] };
    let mut steps = vec![];
    if live.partitions < spec.partitions {
        steps.push(Step::AddPartitions { from: live.partitions, to: spec.partitions });
    } else if live.partitions > spec.partitions {
        steps.push(Step::Drift(format!(
            "{} partitions, the file says {}: partitions are never removed (keys would move); change the file",
            live.partitions, spec.partitions
        )));
    }
    if live.replication_factor != spec.replication_factor {
        steps.push(Step::Drift(format!(
            "replication factor {}, the file says {}: change it with a partition reassignment (kafka-reassign-partitions)",
            live.replication_factor, spec.replication_factor
        )));
    }
    for key in OWNED {
        let want = &spec.configs[key];
        let have = live.configs.get(key);
        if have != Some(want) {
            steps.push(Step::SetConfig { key, from: have.cloned(), to: want.clone() });
        }
    }
    steps
}

fn describe(step: &Step, spec: &TopicSpec) -> String {
    match step {
        Step::Create => format!(
            "create: {} partitions × {} replicas, {}",
            spec.partitions,
            spec.replication_factor,
            spec.configs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        ),
        Step::AddPartitions { from, to } => format!("partitions {from} → {to}"),
        Step::SetConfig { key, from, to } => format!("{key} {} → {to}", from.as_deref().unwrap_or("(unset)")),
        Step::Drift(why) => format!("DRIFT: {why}"),
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn read_live(admin: &AdminClient<DefaultClientContext>, names: &[&str]) -> anyhow::Result<HashMap<String, LiveTopic>> {
    let md = admin.inner().fetch_metadata(None, TIMEOUT).map_err(|e| anyhow::anyhow!("cannot read the cluster's topics: {e}"))?;
    let mut live = HashMap::new();
    for t in md.topics().iter().filter(|t| names.contains(&t.name()) && t.error().is_none() && !t.partitions().is_empty()) {
        let rf = t.partitions().iter().map(|p| p.replicas().len() as i32).min().unwrap_or(0);
        live.insert(
            t.name().to_string(),
            LiveTopic { partitions: t.partitions().len() as i32, replication_factor: rf, configs: HashMap::new() },
        );
    }
    let present: Vec<String> = live.keys().cloned().collect();
    let specifiers: Vec<ResourceSpecifier> = present.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    if !specifiers.is_empty() {
        let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
        let results = futures::executor::block_on(admin.describe_configs(&specifiers, &opts))
            .map_err(|e| anyhow::anyhow!("cannot read the topics' configs: {e}"))?;
        for (name, r) in present.iter().zip(results) {
            let resource = r.map_err(|e| anyhow::anyhow!("cannot read {name}'s configs: {e}"))?;
            let configs = &mut live.get_mut(name).expect("present").configs;
            for e in resource.entries {
                if let Some(v) = e.value {
                    configs.insert(e.name, v);
                }
            }
        }
    }
    Ok(live)
}

/// What `apply` did to one topic: each step and its outcome.
struct Done {
    changed: usize,
    failed: usize,
    drift: usize,
}

fn apply(admin: &AdminClient<DefaultClientContext>, spec: &TopicSpec, steps: &[Step], dry_run: bool) -> Done {
    let mut done = Done { changed: 0, failed: 0, drift: 0 };
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT)).operation_timeout(Some(TIMEOUT));
    let report = |step: &Step, outcome: Result<(), String>, done: &mut Done| match outcome {
        Ok(()) => {
            done.changed += 1;
            println!("{:<28} {}{}", spec.name, describe(step, spec), if dry_run { " (dry run)" } else { ": done" });
        }
        Err(e) => {
            done.failed += 1;
            println!("{:<28} {}: FAILED: {e}", spec.name, describe(step, spec));
        }
    };
    let mut configs: Vec<(&'static str, &str)> = vec![];
    for step in steps {
        match step {
            Step::Drift(_) => {
                done.drift += 1;
                println!("{:<28} {}", spec.name, describe(step, spec));
            }
            Step::Create => {
                let mut t = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
                for (k, v) in &spec.configs {
                    t = t.set(k, v);
                }
                let outcome = if dry_run { Ok(()) } else { first_error(futures::executor::block_on(admin.create_topics([&t], &opts))) };
                report(step, outcome, &mut done);
            }
            Step::AddPartitions { to, .. } => {
                let p = NewPartitions::new(&spec.name, *to as usize);
                let outcome = if dry_run { Ok(()) } else { first_error(futures::executor::block_on(admin.create_partitions([&p], &opts))) };
                report(step, outcome, &mut done);
            }
            Step::SetConfig { key, .. } => configs.push((key, &spec.configs[key])),
        }
    }
    if !configs.is_empty() {
        // One AlterConfigs with every owned config: it replaces the topic's set as a whole.
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
        for (k, v) in spec.configs.iter() {
            alter = alter.set(k, v);
        }
        let outcome = if dry_run {
            Ok(())
        } else {
            match futures::executor::block_on(admin.alter_configs([&alter], &opts)) {
                Ok(rs) => rs.into_iter().find_map(|r| r.err()).map_or(Ok(()), |(_, e)| Err(e.to_string())),
                Err(e) => Err(e.to_string()),
            }
        };
        for step in steps.iter().filter(|s| matches!(s, Step::SetConfig { .. })) {
            report(step, outcome.clone(), &mut done);
        }
    }
    done
}

fn first_error<T>(r: rdkafka::error::KafkaResult<Vec<Result<T, (String, rdkafka::types::RDKafkaErrorCode)>>>) -> Result<(), String> {
    match r {
        Ok(rs) => rs.into_iter().find_map(|r| r.err()).map_or(Ok(()), |(_, e)| Err(e.to_string())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let (opts, apply_it, dry_run) = match args.cmd {
        TopicsCmd::Check(o) => (o, false, false),
        TopicsCmd::Apply { opts, dry_run } => (opts, true, dry_run),
    };
    let text = std::fs::read_to_string(&opts.file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", opts.file.display()))?;
    let specs = parse(&text, &opts.topics.all()).map_err(|e| anyhow::anyhow!("{}: {e}", opts.file.display()))?;
    let kafka = crm_common::kafka::Kafka::from_kafka_args(&opts.kafka)?;
    let admin = kafka.admin()?;
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let live = read_live(&admin, &names)?;
    let (mut up_to_date, mut changed, mut failed, mut drift, mut differ) = (0, 0, 0, 0, 0);
    for spec in &specs {
        let steps = plan(spec, live.get(&spec.name));
        if steps.is_empty() {
            up_to_date += 1;
            println!("{:<28} up to date", spec.name);
            continue;
        }
        differ += 1;
        if apply_it {
            let d = apply(&admin, spec, &steps, dry_run);
            (changed, failed, drift) = (changed + d.changed, failed + d.failed, drift + d.drift);
        } else {
            for s in &steps {
                println!("{:<28} {}", spec.name, describe(s, spec));
            }
        }
    }
    if apply_it {
        let verb = if dry_run { "to change" } else { "changed" };
        println!("{} topics: {up_to_date} up to date, {changed} {verb}, {failed} failed, {drift} drift left", specs.len());
        anyhow::ensure!(failed == 0 && drift == 0, "{failed} change(s) failed, {drift} difference(s) left: see above");
    } else {
        println!("{} topics: {up_to_date} up to date, {differ} differ from {}", specs.len(), opts.file.display());
        anyhow::ensure!(differ == 0, "{differ} topic(s) differ from the file: crm-sync topics apply");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needed() -> Vec<String> {
        Topics::default().all()
    }

    #[test]
    fn the_deploy_file_names_every_topic_and_checks() {
        let specs = parse(include_str!("../../../deploy/topics.toml"), &needed()).unwrap();
        assert_eq!(specs.len(), needed().len());
        let raw = specs.iter().find(|s| s.name == "calls.raw").unwrap();
        assert_eq!((raw.partitions, raw.replication_factor), (12, 3));
        assert_eq!(raw.configs["retention.ms"], (14 * 86_400_000i64).to_string());
        assert_eq!(raw.configs["min.insync.replicas"], "2");
        let writes = specs.iter().find(|s| s.name == "crm.writes.zoho").unwrap();
        assert_eq!(writes.configs["retention.ms"], (30 * 86_400_000i64).to_string(), "the attribution look-back");
    }

    #[test]
    fn mistakes_are_named() {
        let one = |body: &str| format!("[topics.\"calls.raw\"]\n{body}\n");
        let e = parse(&one("partitions = 0\nretention = '1d'"), &["calls.raw".into()]).unwrap_err();
        assert!(e.to_string().contains("partitions"), "{e}");
        let e = parse(&one("partitions = 1\nretention = '1d'\nreplication_factor = 2\nmin_insync_replicas = 3"), &["calls.raw".into()])
            .unwrap_err();
        assert!(e.to_string().contains("min_insync_replicas"), "{e}");
        let e = parse(&one("partitions = 1\nretention = 'soon'"), &["calls.raw".into()]).unwrap_err();
        assert!(e.to_string().contains("retention"), "{e}");
        let e = parse(&one("partitions = 1\nretention = '1d'\ncleanup_policy = 'keep'"), &["calls.raw".into()]).unwrap_err();
        assert!(e.to_string().contains("cleanup_policy"), "{e}");
        let e = parse(&one("partitions = 1\nretention = '1d'\nretension = '1d'"), &["calls.raw".into()]).unwrap_err();
        assert!(e.to_string().contains("retension"), "{e}");
        let e = parse(&one("partitions = 1\nretention = '1d'"), &["calls.raw".into(), "sync.dlq".into()]).unwrap_err();
        assert!(e.to_string().contains("sync.dlq"), "{e}");
        let ok = parse(&one("partitions = 1\nretention = 'forever'"), &["calls.raw".into()]).unwrap();
        assert_eq!(ok[0].configs["retention.ms"], "-1");
    }

    fn spec() -> TopicSpec {
        parse("[topics.t]\npartitions = 6\nreplication_factor = 3\nmin_insync_replicas = 2\nretention = '7d'\n", &[]).unwrap().remove(0)
    }

    fn live(partitions: i32, rf: i32, retention: &str) -> LiveTopic {
        let configs = HashMap::from([
            ("retention.ms".to_string(), retention.to_string()),
            ("cleanup.policy".to_string(), "delete".to_string()),
            ("min.insync.replicas".to_string(), "2".to_string()),
        ]);
        LiveTopic { partitions, replication_factor: rf, configs }
    }

    #[test]
    fn partitions_are_added_never_removed_and_replication_is_reported() {
        let s = spec();
        assert_eq!(plan(&s, None), vec![Step::Create]);
        assert!(plan(&s, Some(&live(6, 3, "604800000"))).is_empty());
        assert_eq!(plan(&s, Some(&live(4, 3, "604800000"))), vec![Step::AddPartitions { from: 4, to: 6 }]);
        let more = plan(&s, Some(&live(8, 3, "604800000")));
        assert!(matches!(&more[..], [Step::Drift(w)] if w.contains("never removed")), "{more:?}");
        let rf = plan(&s, Some(&live(6, 1, "604800000")));
        assert!(matches!(&rf[..], [Step::Drift(w)] if w.contains("replication factor 1")), "{rf:?}");
        assert_eq!(
            plan(&s, Some(&live(6, 3, "86400000"))),
            vec![Step::SetConfig { key: "retention.ms", from: Some("86400000".into()), to: "604800000".into() }]
        );
    }
}
