//! The deployment files cannot run here (no container engine, no cluster), so this checks
//! what can go wrong in them without one: each parses; every service, binary, topic,
//! consumer group, variable and metric they name exists in the code; every Deployment has
//! probes on the health endpoints and a grace period; every alert has a runbook line.

use crm_sync_tests::{bin, repo_root};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = vec![];
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let mut v: yaml_serde::Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path} does not parse: {e}"));
        v.apply_merge().unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
        if !v.is_null() {
            out.push(serde_json::to_value(v).unwrap_or_else(|e| panic!("{path}: {e}")));
        }
    }
    out
}

fn rust_sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
}

fn code() -> String {
    let mut s = String::new();
    rust_sources(&repo_root().join("services"), &mut s);
    s
}

/// Every `env = "NAME"` (clap) and `env::var("NAME")` in the services.
fn code_vars(code: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    // clap's `env = "…"`, a direct read, and a constant that names a variable (`…_ENV`).
    for marker in ["env = \"", "env::var(\"", "_ENV: &str = \""] {
        for part in code.split(marker).skip(1) {
            if let Some(name) = part.split('"').next() {
                vars.insert(name.to_string());
            }
        }
    }
    vars
}

/// The secret names the example tenants file gives (credentials come only from these).
fn secret_names() -> BTreeSet<String> {
    let t: toml::Value = toml::from_str(&std::fs::read_to_string(repo_root().join("deploy/tenants.example.toml")).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for (_, tenant) in t["tenants"].as_table().unwrap() {
        for (_, crm) in tenant.get("crms").and_then(|c| c.as_table()).into_iter().flatten() {
            if let Some(s) = crm.get("credentials_secret").and_then(|s| s.as_str()) {
                out.insert(s.to_string());
            }
        }
    }
    out
}

fn topics() -> BTreeSet<String> {
    crm_common::config::Topics::default().all().into_iter().collect()
}

/// The OpenTelemetry instruments, as the collector's Prometheus exporter names them. Each
/// must be declared in the code under its OpenTelemetry name.
const METRICS: [(&str, &[&str]); 16] = [
    ("crm_sync.messages", &["crm_sync_messages_total"]),
    ("crm_sync.lead.people", &["crm_sync_lead_people_total"]),
    ("crm_sync.produced", &["crm_sync_produced_total"]),
    (
        "crm_sync.processing.duration",
        &[
            "crm_sync_processing_duration_milliseconds_bucket",
            "crm_sync_processing_duration_milliseconds_count",
            "crm_sync_processing_duration_milliseconds_sum",
        ],
    ),
    ("crm_sync.consumer.lag", &["crm_sync_consumer_lag"]),
    (
        "crm_sync.crm.request.duration",
        &[
            "crm_sync_crm_request_duration_milliseconds_bucket",
            "crm_sync_crm_request_duration_milliseconds_count",
            "crm_sync_crm_request_duration_milliseconds_sum",
        ],
    ),
    ("crm_sync.crm.retries", &["crm_sync_crm_retries_total"]),
    (
        "crm_sync.token.wait",
        &["crm_sync_token_wait_milliseconds_bucket", "crm_sync_token_wait_milliseconds_count", "crm_sync_token_wait_milliseconds_sum"],
    ),
    ("crm_sync.bucket.remaining", &["crm_sync_bucket_remaining"]),
    ("crm_sync.dlq", &["crm_sync_dlq_total"]),
    ("crm_sync.reconcile.records", &["crm_sync_reconcile_records"]),
    ("crm_sync.writer.backlog.gone", &["crm_sync_writer_backlog_gone_total"]),
    ("crm_sync.dlq.open", &["crm_sync_dlq_open"]),
    ("crm_sync.dlq.open.oldest_age", &["crm_sync_dlq_open_oldest_age_seconds"]),
    ("crm_sync.tenants.refused", &["crm_sync_tenants_refused"]),
    ("crm_sync.tenants.reloads", &["crm_sync_tenants_reloads_total"]),
];

fn prometheus_names(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (otel, prom) in METRICS {
        assert!(code.contains(&format!("\"{otel}\"")), "{otel} is not declared in the code");
        out.extend(prom.iter().map(|s| s.to_string()));
    }
    out
}

/// An alert's `runbook_url` names its page in `deploy/runbooks/`: the page exists, is about that
/// alert, says what it means, how to confirm it and what to do, and every crm-sync metric it
/// names is one a service exports. Returns the page's path.
fn runbook_page(alert: &str, annotations: &Value, known: &BTreeSet<String>) -> String {
    let url = annotations["runbook_url"].as_str().unwrap_or_else(|| panic!("{alert} has no runbook_url"));
    assert_eq!(url, format!("deploy/runbooks/{alert}.md"), "{alert}: the runbook is the page named after it");
    let page = std::fs::read_to_string(repo_root().join(url)).unwrap_or_else(|e| panic!("{alert}: {url}: {e}"));
    assert!(page.starts_with(&format!("# {alert}\n")), "{url} is titled with its alert");
    for section in ["## What it means", "## How to confirm", "## What to do"] {
        let at = page.find(section).unwrap_or_else(|| panic!("{url} has no {section:?}"));
        let body = page[at + section.len()..].split("\n## ").next().unwrap_or_default();
        assert!(body.trim().len() > 80, "{url}: {section:?} says something");
    }
    for m in metrics_in(&page) {
        assert!(known.contains(&m), "{url} names {m}, which no service exports");
    }
    url.to_string()
}

/// The crm_sync_* names a PromQL expression uses.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("crm_sync_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        out.insert(name.clone());
        rest = &rest[i + name.len()..];
    }
    out
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

/// The crm-sync services and their consumer groups (a service's default group is its name).
const SERVICES: [(&str, &[&str]); 8] = [
    ("normaliser", &["normaliser"]),
    ("deduper", &["deduper"]),
    ("audit-sink", &["audit-sink"]),
    ("reconciler", &["reconciler"]),
    ("writer-hubspot", &["writer", "--crm", "hubspot"]),
    ("writer-salesforce", &["writer", "--crm", "salesforce"]),
    ("writer-zoho", &["writer", "--crm", "zoho"]),
    ("writer-pipedrive", &["writer", "--crm", "pipedrive"]),
];

#[test]
fn docker_compose_names_only_what_exists() {
    let code = code();
    let vars = code_vars(&code);
    let secrets = secret_names();
    let docs = yaml_docs("docker-compose.yml");
    let services = docs[0]["services"].as_object().expect("services");
    for name in ["kafka", "redis", "postgres", "otel-collector", "prometheus", "grafana", "crm-sim"] {
        assert!(services.contains_key(name), "compose brings up {name}");
    }
    assert!(
        services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str().is_some_and(|r| r.contains("controller")),
        "Kafka runs in KRaft mode"
    );
    for (svc, command) in SERVICES {
        let s = services.get(svc).unwrap_or_else(|| panic!("compose has no {svc}"));
        assert_eq!(str_list(&s["command"]), command.iter().map(|c| c.to_string()).collect::<Vec<_>>(), "{svc}'s command");
        assert!(s["healthcheck"]["test"].to_string().contains("/readyz"), "{svc} has a healthcheck on /readyz");
        assert!(
            s["environment"]["HEALTH_ADDR"].is_string() && s["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].is_string(),
            "{svc} serves health and exports telemetry"
        );
    }
    for (name, s) in services {
        if s.get("build").is_some() {
            let cmd = str_list(&s["command"]);
            assert!(bin(&cmd[0]).exists(), "{name} runs {}, which the workspace does not build", cmd[0]);
            for var in s["environment"].as_object().into_iter().flatten().map(|(k, _)| k) {
                assert!(
                    vars.contains(var) || secrets.contains(var),
                    "{name} sets {var}, which no service reads and no tenant names as a secret"
                );
            }
        }
        for dep in s["depends_on"].as_object().into_iter().flatten().map(|(k, _)| k) {
            assert!(services.contains_key(dep), "{name} depends on unknown {dep}");
        }
        for vol in str_list(&s["volumes"]) {
            if let Some(local) = vol.strip_prefix("./") {
                let local = local.split(':').next().unwrap();
                assert!(repo_root().join(local).exists(), "{name} mounts {local}, which is not in the repo");
            }
        }
    }
    let created: BTreeSet<String> = {
        let cmd = services["topics"]["command"].to_string();
        let list = cmd.split("for t in").nth(1).and_then(|r| r.split(';').next()).expect("a topic list");
        list.split_whitespace().map(String::from).collect()
    };
    assert_eq!(created, topics(), "compose creates exactly the topics the services use");
}

#[test]
fn kubernetes_manifests_name_only_what_exists_and_probe_health() {
    let code = code();
    let vars = code_vars(&code);
    let health = std::fs::read_to_string(repo_root().join("services/common/src/health.rs")).unwrap();
    let config = yaml_docs("deploy/k8s/config.yaml");
    let config_keys: BTreeSet<String> = config[0]["data"].as_object().unwrap().keys().cloned().collect();
    let mut deployments: BTreeMap<String, Value> = BTreeMap::new();
    for (svc, _) in SERVICES {
        let file = format!("deploy/k8s/{svc}.yaml");
        for d in yaml_docs(&file) {
            assert_eq!(d["kind"], "Deployment", "{file}");
            deployments.insert(d["metadata"]["name"].as_str().unwrap().to_string(), d);
        }
    }
    for (svc, command) in SERVICES {
        let name = format!("crm-sync-{svc}");
        let d = deployments.get(&name).unwrap_or_else(|| panic!("no Deployment {name}"));
        let spec = &d["spec"]["template"]["spec"];
        assert!(spec["terminationGracePeriodSeconds"].as_u64().is_some_and(|s| s >= 30), "{name}: a grace period to drain and commit");
        let c = &spec["containers"][0];
        assert_eq!(str_list(&c["command"]), command.iter().map(|c| c.to_string()).collect::<Vec<_>>(), "{name}");
        assert!(bin(command[0]).exists(), "{name} runs {}", command[0]);
        let env: BTreeMap<String, Value> =
            c["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_string(), e.clone())).collect();
        for (var, e) in &env {
            assert!(vars.contains(var), "{name} sets {var}, which no service reads");
            if let Some(key) = e["valueFrom"]["configMapKeyRef"]["key"].as_str() {
                if e["valueFrom"]["configMapKeyRef"]["name"] == "crm-sync" {
                    assert!(config_keys.contains(key), "{name}: ConfigMap crm-sync has no {key}");
                }
            }
        }
        // The tenants file is followed while running: its ConfigMap is mounted as a directory
        // (a subPath mount never sees an update), and TENANTS_CONFIG lies in it.
        let tenants_file = env["TENANTS_CONFIG"]["value"].as_str().expect("TENANTS_CONFIG set");
        let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "tenants").expect("the tenants ConfigMap mounted");
        assert!(mount["subPath"].is_null(), "{name}: the tenants ConfigMap is mounted with subPath, which Kubernetes never updates");
        assert!(tenants_file.starts_with(&format!("{}/", mount["mountPath"].as_str().unwrap())), "{name}: {tenants_file} is in the mount");
        let port = env["HEALTH_ADDR"]["value"].as_str().and_then(|a| a.rsplit(':').next()).expect("HEALTH_ADDR set");
        let health_port = c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "health").expect("a health port");
        assert_eq!(health_port["containerPort"].to_string(), port, "{name}: the probed port is HEALTH_ADDR's");
        for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{name}: {probe}");
            assert!(health.contains(&format!("\"{path}\"")), "the services serve {path}");
        }
    }
    let keda = yaml_docs("deploy/k8s/keda.yaml");
    for crm in ["hubspot", "salesforce", "zoho", "pipedrive"] {
        assert!(keda.iter().any(|k| k["spec"]["scaleTargetRef"]["name"] == format!("crm-sync-writer-{crm}")), "writer-{crm} autoscales");
    }
    for k in &keda {
        assert_eq!(k["kind"], "ScaledObject");
        let target = k["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
        assert!(deployments.contains_key(target), "KEDA scales unknown {target}");
        let svc = target.strip_prefix("crm-sync-").unwrap();
        for t in k["spec"]["triggers"].as_array().unwrap() {
            let m = &t["metadata"];
            assert_eq!(t["type"], "kafka");
            assert!(topics().contains(m["topic"].as_str().unwrap()), "{target}: unknown topic {}", m["topic"]);
            assert_eq!(m["consumerGroup"], svc, "{target} scales on its own consumer group");
            assert_eq!(
                m["bootstrapServers"], config[0]["data"]["kafka_bootstrap_servers"],
                "{target}: KEDA watches the brokers the services use"
            );
        }
    }
}

#[test]
fn alerts_dashboard_and_collector_use_exported_metrics() {
    let code = code();
    let known = prometheus_names(&code);
    let alerts = yaml_docs("deploy/prometheus/alerts.yml");
    let mut rules = 0;
    let mut runbook_pages = vec![];
    for g in alerts[0]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            rules += 1;
            let name = r["alert"].as_str().expect("alert name");
            let expr = r["expr"].as_str().expect("expr");
            assert!(r["annotations"]["runbook"].as_str().is_some_and(|s| s.len() > 20), "{name} has a runbook line");
            runbook_pages.push(runbook_page(name, &r["annotations"], &known));
            assert!(r["annotations"]["summary"].is_string(), "{name} has a summary");
            let used = metrics_in(expr);
            assert!(!used.is_empty(), "{name} reads a crm-sync metric");
            for m in used {
                assert!(known.contains(&m), "{name} reads {m}, which no service exports");
            }
        }
    }
    assert!(rules >= 10, "{rules} rules");
    let mut on_disk: Vec<String> = std::fs::read_dir(repo_root().join("deploy/runbooks"))
        .expect("deploy/runbooks")
        .map(|e| format!("deploy/runbooks/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md") && !p.ends_with("README.md"))
        .collect();
    on_disk.sort();
    runbook_pages.sort();
    assert_eq!(on_disk, runbook_pages, "one runbook page per alert, and none for an alert that is gone");
    // Connector-specific rules: one set per CRM.
    let text = serde_json::to_string(&alerts).unwrap();
    for crm in ["hubspot", "salesforce", "zoho", "pipedrive"] {
        assert!(text.contains(&format!("crm=\\\"{crm}\\\"")), "rules for {crm}");
    }

    let dash: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/grafana/dashboards/crm-sync.json")).unwrap())
        .expect("dashboard JSON");
    let mut titles = vec![];
    for p in dash["panels"].as_array().unwrap() {
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        for t in p["targets"].as_array().unwrap() {
            for m in metrics_in(t["expr"].as_str().unwrap()) {
                assert!(known.contains(&m), "panel {} reads {m}, which no service exports", p["title"]);
            }
        }
    }
    for wanted in ["queue depth", "retry rate", "failure rate per connector", "latency", "leads: people created"] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "a panel for {wanted}: {titles:?}");
    }

    let col = &yaml_docs("deploy/otel-collector.yaml")[0];
    for (_, p) in col["service"]["pipelines"].as_object().unwrap() {
        for (part, list) in [("receivers", &p["receivers"]), ("processors", &p["processors"]), ("exporters", &p["exporters"])] {
            for name in str_list(list) {
                assert!(col[part].get(&name).is_some(), "the collector's pipelines use undefined {part} {name}");
            }
        }
    }
    let prom = &yaml_docs("deploy/prometheus/prometheus.yml")[0];
    assert_eq!(str_list(&prom["rule_files"]), vec!["/etc/prometheus/alerts.yml".to_string()]);
    assert!(prom["scrape_configs"].to_string().contains("otel-collector:8889"), "Prometheus scrapes the collector's exporter");
    assert!(col["exporters"]["prometheus"]["endpoint"].as_str().unwrap().ends_with(":8889"));
}

#[test]
fn the_topics_job_applies_the_declared_topics_with_known_variables() {
    let vars = code_vars(&code());
    let docs = yaml_docs("deploy/k8s/topics-job.yaml");
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(spec["restartPolicy"], "Never", "a failed apply is seen, not retried forever");
    let c = &spec["containers"][0];
    assert_eq!(str_list(&c["command"]), ["crm-sync", "topics", "apply"]);
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(vars.contains(name), "the Job sets {name}, which no binary reads");
    }
    let file = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "TOPICS_FILE").expect("TOPICS_FILE")["value"].as_str().unwrap();
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(file.starts_with(&format!("{mount}/")), "{file} is in the mounted ConfigMap ({mount})");
    // Every topic the services use is declared in the file the Job applies.
    let declared = std::fs::read_to_string(repo_root().join("deploy/topics.toml")).unwrap();
    for t in topics() {
        assert!(declared.contains(&format!("[topics.\"{t}\"]")), "deploy/topics.toml does not declare {t}");
    }
}
