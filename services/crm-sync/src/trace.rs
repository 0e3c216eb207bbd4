//! `crm-sync trace <call_id> [--tenant T] [--json]`: a call's whole path across every stage,
//! in time order, from the audit store: normalised, deduped, throttled, written (with the CRM
//! record id), retried, dead-lettered and why. Written for the support person asking "why
//! didn't my call show up": one line per step, the CRM requests under it, and a last line per
//! CRM saying where the call ended up.

use crm_common::audit_store::{AuditStore, Step};
use std::collections::BTreeMap;

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The activity's id, as the source system sent it: a call id, an email's Message-ID
    /// (angle brackets optional), a meeting's iCalUID (with `/` and its occurrence for one
    /// occurrence of a series), or its calendar event id.
    pub call_id: String,
    /// Only this tenant's call (call ids may repeat across tenants).
    #[arg(long)]
    pub tenant: Option<String>,
    /// One JSON object per line instead of text (for scripts).
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
}

/// A CRM request (audited by the writer per HTTP exchange) rather than a stage's step.
fn is_exchange(s: &Step) -> bool {
    s.crm_status.is_some() || s.operation.starts_with(['G', 'P', 'D'])
}

/// The steps as a support person reads them.
pub fn render(call_id: &str, steps: &[Step]) -> String {
    if steps.is_empty() {
        return format!(
            "No record of activity {call_id} (a call, email or meeting id) in the audit store.\n\
             It never reached crm-sync (check the source system's id), or its audit has not been stored yet \
             (is the audit-sink running?), or it is older than the audit retention.\n"
        );
    }
    let mut out = String::new();
    let tenants: Vec<&str> = {
        let mut t: Vec<&str> = steps.iter().map(|s| s.tenant_id.as_str()).collect();
        t.dedup();
        t
    };
    let kind = steps.iter().find(|s| s.kind != "call").map_or("call", |s| s.kind.as_str());
    let mut what = kind.to_string();
    what[..1].make_ascii_uppercase();
    out += &format!(
        "{what} {call_id} (tenant {}), {} audit records from {} to {} UTC, trace {}\n",
        tenants.join(", "),
        steps.len(),
        steps[0].at,
        steps[steps.len() - 1].at,
        steps[0].trace_id
    );
    for s in steps {
        let crm = s.crm.as_deref().unwrap_or("");
        if is_exchange(s) {
            let status = s.crm_status.map(|c| c.to_string()).unwrap_or_else(|| "—".into());
            let latency = s.latency_ms.map(|l| format!(" {l} ms")).unwrap_or_default();
            let attempt = if s.attempt > 1 { format!(", attempt {}", s.attempt) } else { String::new() };
            let what = if s.outcome == "SUCCEEDED" { String::new() } else { format!(" {}: {}", s.outcome, s.detail) };
            out += &format!("  {}  {:<10} {:<10}   {} → {status}{latency}{attempt}{what}\n", s.at, "", crm, s.operation);
            continue;
        }
        let version = s.version.map(|v| format!("v{v}")).unwrap_or_default();
        let reason = s.reason.as_deref().map(|r| format!("{r}: ")).unwrap_or_default();
        let record = s
            .crm_record_id
            .as_deref()
            .filter(|id| s.outcome == "SUCCEEDED" && !s.detail.contains(*id))
            .map(|id| format!(" [record {id}]"))
            .unwrap_or_default();
        out += &format!("{}  {:<10} {:<10} {:<3} {:<13} {reason}{}{record}\n", s.at, s.stage, crm, version, s.outcome, s.detail);
        if let Some(d) = &s.dlq {
            out += &format!("  {:>23}  ↳ {d}\n", "");
        }
    }
    // Where the call ended up, per CRM: the last write step of its newest version. An
    // older version settled in the same millisecond ("superseded by version 2 in the same
    // batch") can sort after the newer one's write, and must not hide it.
    let mut last: BTreeMap<String, &Step> = BTreeMap::new();
    for s in steps.iter().filter(|s| s.stage == "WRITER" && s.operation == "write") {
        let crm = s.crm.clone().unwrap_or_default();
        if last.get(&crm).is_none_or(|prev| prev.version.unwrap_or(0) <= s.version.unwrap_or(0)) {
            last.insert(crm, s);
        }
    }
    let fanned: Vec<String> =
        steps.iter().filter(|s| s.stage == "DEDUPER" && s.outcome == "SUCCEEDED").filter_map(|s| s.crm.clone()).collect();
    let mut end = vec![];
    for crm in fanned.iter().chain(last.keys()).collect::<std::collections::BTreeSet<_>>() {
        end.push(match last.get(crm) {
            Some(s) if s.outcome == "SUCCEEDED" || s.outcome == "DUPLICATE" => {
                format!("{crm}: in the CRM as record {}", s.crm_record_id.as_deref().unwrap_or("?"))
            }
            Some(s) if s.outcome == "DEAD_LETTERED" => format!(
                "{crm}: NOT written: {} ({})",
                s.reason.as_deref().unwrap_or("?"),
                s.dlq.as_deref().unwrap_or("see crm-sync dlq list")
            ),
            Some(s) => format!("{crm}: {}", s.outcome.to_lowercase()),
            None => format!("{crm}: handed to the writer; no write recorded yet"),
        });
    }
    if let Some(dead) = steps.iter().find(|s| s.outcome == "DEAD_LETTERED" && s.stage != "WRITER") {
        end.push(format!(
            "stopped at the {}: {} ({})",
            dead.stage.to_lowercase(),
            dead.reason.as_deref().unwrap_or("?"),
            dead.dlq.as_deref().unwrap_or("see crm-sync dlq list")
        ));
    }
    if !end.is_empty() {
        out += &format!("Outcome: {}\n", end.join("; "));
    }
    out
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut store = AuditStore::connect(&args.database_url).await?;
        store.migrate().await?;
        // A Message-ID is stored without its angle brackets.
        let id = crm_common::email::bare_message_id(&args.call_id);
        let steps = store.trace(id, args.tenant.as_deref()).await?;
        if args.json {
            for s in &steps {
                println!("{}", serde_json::to_string(s)?);
            }
        } else {
            print!("{}", render(id, &steps));
        }
        anyhow::ensure!(!steps.is_empty() || args.json, "no audit records for call {}", args.call_id);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(stage: &str, crm: Option<&str>, op: &str, outcome: &str) -> Step {
        Step {
            at: "2026-11-23 10:00:00.000".into(),
            tenant_id: "acme".into(),
            stage: stage.into(),
            crm: crm.map(str::to_string),
            operation: op.into(),
            outcome: outcome.into(),
            reason: None,
            detail: "d".into(),
            version: Some(1),
            attempt: 1,
            crm_status: None,
            crm_record_id: None,
            latency_ms: None,
            trace_id: "t".into(),
            kind: "call".into(),
            dlq: None,
        }
    }

    #[test]
    fn the_outcome_line_says_where_the_call_ended_up_per_crm() {
        let mut written = step("WRITER", Some("hubspot"), "write", "SUCCEEDED");
        written.crm_record_id = Some("301".into());
        let mut dead = step("WRITER", Some("salesforce"), "write", "DEAD_LETTERED");
        dead.reason = Some("PERMISSION_DENIED".into());
        dead.dlq = Some("dlq entry x, open, replayed 0×".into());
        let steps = vec![
            step("NORMALISER", None, "normalise", "SUCCEEDED"),
            step("DEDUPER", Some("hubspot"), "dedup", "SUCCEEDED"),
            step("DEDUPER", Some("salesforce"), "dedup", "SUCCEEDED"),
            step("DEDUPER", Some("zoho"), "dedup", "SUCCEEDED"),
            written,
            dead,
        ];
        let text = render("c1", &steps);
        assert!(text.contains("hubspot: in the CRM as record 301"), "{text}");
        assert!(text.contains("salesforce: NOT written: PERMISSION_DENIED (dlq entry x, open, replayed 0×)"), "{text}");
        assert!(text.contains("zoho: handed to the writer; no write recorded yet"), "{text}");
        assert!(render("nope", &[]).contains("No record of activity nope"));
    }

    #[test]
    fn an_older_version_settled_after_the_newer_one_does_not_hide_its_write() {
        let mut v2 = step("WRITER", Some("hubspot"), "write", "SUCCEEDED");
        v2.version = Some(2);
        v2.crm_record_id = Some("305".into());
        let v1 = step("WRITER", Some("hubspot"), "write", "SKIPPED");
        let steps = vec![step("DEDUPER", Some("hubspot"), "dedup", "SUCCEEDED"), v2, v1];
        let text = render("c1", &steps);
        assert!(text.contains("Outcome: hubspot: in the CRM as record 305"), "{text}");
    }
}
