//! `crm-sync trace`: an activity's whole path across every stage, in time order, from the
//! audit store: normalised, deduped, throttled, written (with the CRM record id), retried,
//! dead-lettered and why. Written for the support person asking "why didn't my call show
//! up": one line per step, the CRM requests under it, and a last line per CRM saying where
//! the activity ended up.
//!
//! Without an id it finds the activities first: by a customer's number or address, by the
//! agent, in a time range (`--phone`, `--email`, `--agent`, `--since`, `--until`, of one
//! `--tenant`), through `audit_lookup`'s keyed names (`crm_common::lookups`), newest first, a
//! line each with where it ended up; one found is traced whole.

use crm_common::audit_store::{AuditStore, Step};
use crm_common::lookups::{Lookup, Lookups};
use std::collections::BTreeMap;

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The activity's id, as the source system sent it: a call id, an email's Message-ID
    /// (angle brackets optional), a meeting's iCalUID (with `/` and its occurrence for one
    /// occurrence of a series), or its calendar event id. Without it, the activities are
    /// found by --phone, --email, --agent, --since and --until.
    pub call_id: Option<String>,
    /// Only this tenant's activities (ids may repeat across tenants). Needed to find
    /// activities without an id: each tenant's lookups are keyed apart.
    #[arg(long)]
    pub tenant: Option<String>,
    /// The activities with this customer number: E.164 (+14155550199), or national in the
    /// tenant's default region (from TENANTS_CONFIG) or in --region.
    #[arg(long)]
    pub phone: Option<String>,
    /// The region a national --phone is in (ISO 3166 code, e.g. GB).
    #[arg(long)]
    pub region: Option<String>,
    /// The emails and meetings with this participant's address.
    #[arg(long)]
    pub email: Option<String>,
    /// The activities of this agent (mailbox or calendar owner): their id at the source or
    /// their address.
    #[arg(long)]
    pub agent: Option<String>,
    /// Activities that happened at or after this time: RFC 3339 (2026-12-03T15:00:00Z), a UTC
    /// date or date and time (2026-12-03, 2026-12-03 15:00), or a time ago (2h, 3d).
    #[arg(long)]
    pub since: Option<String>,
    /// Activities that happened before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many activities found, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// One JSON object per line instead of text (for scripts).
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// The tenants file, for a tenant's default region (a national --phone).
    #[arg(long, env = "TENANTS_CONFIG")]
    pub tenants_config: Option<std::path::PathBuf>,
}

/// A CRM request (audited by the writer per HTTP exchange) rather than a stage's step.
fn is_exchange(s: &Step) -> bool {
    s.crm_status.is_some() || s.operation.starts_with(['G', 'P', 'D'])
}

/// The steps as a support person reads them.
pub fn render(call_id: &str, steps: &[Step]) -> String {
    if steps.is_empty() {
        return format!(
            "No record of activity {call_id} (a call, email, meeting or lead id) in the audit store.\n\
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
            // A success says only what is not plain "ok" (a lookup's "not found").
            let what = match (s.outcome.as_str(), s.detail.as_str()) {
                ("SUCCEEDED", "ok") => String::new(),
                ("SUCCEEDED", detail) => format!(" {detail}"),
                (outcome, detail) => format!(" {outcome}: {detail}"),
            };
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
    let end = outcome(steps);
    if !end.is_empty() {
        out += &format!("Outcome: {}\n", end.join("; "));
    }
    out
}

/// Where the activity ended up, per CRM, and where it stopped if a stage before the writers
/// dead-lettered it.
pub fn outcome(steps: &[Step]) -> Vec<String> {
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
    if end.is_empty() {
        if let Some(last) = steps.last() {
            end.push(format!("last step: {} {}", last.stage.to_lowercase(), last.outcome.to_lowercase()));
        }
    }
    end
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let search = Search::from_args(&args)?;
        let mut store = AuditStore::connect(&args.database_url).await?;
        store.migrate().await?;
        let Some(raw_id) = &args.call_id else {
            return find(&store, &args, search.expect("an id or a search")).await;
        };
        // A Message-ID is stored without its angle brackets.
        let id = crm_common::email::bare_message_id(raw_id);
        let steps = store.trace(id, args.tenant.as_deref()).await?;
        print_trace(id, &steps, args.json)?;
        anyhow::ensure!(!steps.is_empty() || args.json, "no audit records for activity {raw_id}");
        Ok(())
    })
}

fn print_trace(id: &str, steps: &[Step], json: bool) -> anyhow::Result<()> {
    if json {
        for s in steps {
            println!("{}", serde_json::to_string(s)?);
        }
    } else {
        print!("{}", render(id, steps));
    }
    Ok(())
}

/// What to find activities by, checked and named as the audit store keeps it.
#[derive(Debug)]
struct Search {
    tenant: String,
    /// The keyed names every activity found must have (one per criterion).
    names: Vec<String>,
    /// What was asked, masked, for the heading.
    asked: Vec<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Search {
    /// None when an id is given and nothing else; an error for a search that cannot be run.
    fn from_args(args: &TraceArgs) -> anyhow::Result<Option<Search>> {
        let by = [&args.phone, &args.email, &args.agent, &args.since, &args.until];
        let searching = by.iter().any(|o| o.is_some());
        if args.call_id.is_some() {
            anyhow::ensure!(!searching, "give an activity id, or --phone/--email/--agent/--since/--until to find activities, not both");
            return Ok(None);
        }
        anyhow::ensure!(
            searching,
            "give an activity id, or find activities with --phone, --email, --agent, --since or --until (and --tenant)"
        );
        let Some(tenant) = args.tenant.clone() else {
            anyhow::bail!("finding activities needs --tenant: each tenant's numbers, addresses and agents are named by keys of its own");
        };
        let now = chrono::Utc::now();
        let since = args.since.as_deref().map(|t| crate::when::at(t, now).map_err(|e| anyhow::anyhow!("--since: {e}"))).transpose()?;
        let until = args.until.as_deref().map(|t| crate::when::at(t, now).map_err(|e| anyhow::anyhow!("--until: {e}"))).transpose()?;
        if let (Some(s), Some(u)) = (since, until) {
            anyhow::ensure!(s < u, "--since ({s}) is not before --until ({u})");
        }
        let lookups = Lookups::from_env();
        let (mut names, mut asked) = (vec![], vec![]);
        if let Some(raw) = &args.phone {
            let e164 = phone_of(raw, args, &tenant)?;
            names.push(lookups.name(&tenant, Lookup::Phone(&e164)));
            asked.push(format!("phone {}", crm_common::phone::mask(&e164)));
        }
        if let Some(raw) = &args.email {
            let address = crm_common::email::canonical(raw.trim())
                .map_err(|e| anyhow::anyhow!("--email {}: {e}", crm_common::email::mask_shape(raw)))?;
            names.push(lookups.name(&tenant, Lookup::Email(&address)));
            asked.push(format!("email {}", crm_common::email::mask_shape(&address)));
        }
        if let Some(agent) = &args.agent {
            anyhow::ensure!(!agent.trim().is_empty(), "--agent is empty");
            names.push(lookups.name(&tenant, Lookup::Agent(agent)));
            asked.push(format!("agent {}", agent.trim()));
        }
        if let Some(s) = since {
            asked.push(format!("since {}", s.format("%Y-%m-%d %H:%M:%S UTC")));
        }
        if let Some(u) = until {
            asked.push(format!("until {}", u.format("%Y-%m-%d %H:%M:%S UTC")));
        }
        Ok(Some(Search { tenant, names, asked, since, until }))
    }
}

/// `raw` in E.164: as given when it starts with '+', else in --region or the tenant's default
/// region.
fn phone_of(raw: &str, args: &TraceArgs, tenant: &str) -> anyhow::Result<String> {
    use crm_common::phone;
    let masked = phone::mask(raw.trim());
    if raw.trim().starts_with('+') {
        return phone::to_e164(raw, None).map_err(|e| anyhow::anyhow!("--phone {masked}: {e}"));
    }
    let region = match (&args.region, &args.tenants_config) {
        (Some(r), _) => phone::region(r).map_err(|e| anyhow::anyhow!("--region: {e}"))?,
        (None, Some(path)) => {
            let tenants = crm_common::tenants::Tenants::load(path)?;
            let Some(t) = tenants.get(tenant) else {
                anyhow::bail!("--phone {masked} is national and tenant {tenant:?} is not in {}: give --region or +E.164", path.display())
            };
            t.default_region
        }
        (None, None) => {
            anyhow::bail!("--phone {masked} is national: give it in E.164 (+…), or --region, or TENANTS_CONFIG for the tenant's region")
        }
    };
    phone::to_e164(raw, Some(region)).map_err(|e| anyhow::anyhow!("--phone {masked}: {e}"))
}

/// Finds the activities and prints a line each (newest first), or the whole trace of the one
/// found.
async fn find(store: &AuditStore, args: &TraceArgs, search: Search) -> anyhow::Result<()> {
    let found = store.find(&search.tenant, &search.names, search.since, search.until, i64::from(args.limit.max(1))).await?;
    let heading = format!("tenant {}, {}", search.tenant, search.asked.join(", "));
    if found.is_empty() {
        if args.json {
            return Ok(());
        }
        anyhow::bail!(
            "no activity of {heading} in the audit store (numbers and addresses are looked up as the normaliser named them with the \
             deployment's CRM_SYNC_TOKEN_KEY: run this with the same key; activities normalised before lookups existed are found by id only)"
        );
    }
    let mut traced = vec![];
    for f in &found {
        traced.push((f, store.trace(&f.activity_id, Some(&search.tenant)).await?));
    }
    if args.json {
        for (f, steps) in &traced {
            println!("{}", serde_json::json!({ "activity": f, "outcome": outcome(steps) }));
        }
        return Ok(());
    }
    if let [(f, steps)] = traced.as_slice() {
        println!("1 activity of {heading}:\n");
        return print_trace(&f.activity_id, steps, false);
    }
    let more = if found.len() as u32 >= args.limit.max(1) { " (the newest; --limit for more)" } else { "" };
    println!("{} activities of {heading}, newest first{more}:", found.len());
    for (f, steps) in &traced {
        let end = outcome(steps);
        println!("  {}  {:<7} {}  {}", f.activity_at, f.kind, f.activity_id, end.join("; "));
    }
    println!("(crm-sync trace <id> --tenant {} for one's whole path)", search.tenant);
    Ok(())
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
    fn an_exchange_line_says_what_is_not_plain_ok() {
        let exchange = |status: i16, outcome: &str, detail: &str| {
            let mut s = step("WRITER", Some("salesforce"), "GET /sobjects/Task/CrmSyncKey__c/k", outcome);
            (s.crm_status, s.detail) = (Some(status.into()), detail.into());
            s
        };
        let text = render(
            "c1",
            &[
                exchange(404, "SUCCEEDED", "not found: no such record (the answer this lookup by key asked for)"),
                exchange(201, "SUCCEEDED", "ok"),
                exchange(400, "DEAD_LETTERED", "VALIDATION: bad field"),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].ends_with("→ 404 not found: no such record (the answer this lookup by key asked for)"), "{text}");
        assert!(lines[2].ends_with("→ 201"), "{text}");
        assert!(lines[3].ends_with("→ 400 DEAD_LETTERED: VALIDATION: bad field"), "{text}");
    }

    fn args(line: &[&str]) -> TraceArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            trace: TraceArgs,
        }
        <Cli as clap::Parser>::try_parse_from(std::iter::once("trace").chain(line.iter().copied())).unwrap().trace
    }

    #[test]
    fn a_search_needs_its_tenant_and_names_numbers_as_the_normaliser_does() {
        let e = |line: &[&str]| Search::from_args(&args(line)).unwrap_err().to_string();
        assert!(e(&["--phone", "+14155550199"]).contains("needs --tenant"));
        assert!(e(&[]).contains("give an activity id"));
        assert!(e(&["c1", "--agent", "a"]).contains("not both"));
        assert!(e(&["--tenant", "acme", "--phone", "(415) 555-0199"]).contains("is national"));
        assert!(!e(&["--tenant", "acme", "--phone", "(415) 555-0199"]).contains("555-0199"), "the number is masked in errors");
        assert!(e(&["--tenant", "acme", "--since", "2h", "--until", "3h"]).contains("is not before"));
        assert!(Search::from_args(&args(&["c1"])).unwrap().is_none());

        let national = Search::from_args(&args(&["--tenant", "acme", "--phone", "(415) 555-0199", "--region", "US"])).unwrap().unwrap();
        let e164 = Search::from_args(&args(&["--tenant", "acme", "--phone", "+1 415-555-0199"])).unwrap().unwrap();
        assert_eq!(national.names, e164.names, "one number however it is written");
        assert_eq!(e164.names, vec![Lookups::from_env().name("acme", Lookup::Phone("+14155550199"))]);
        assert!(!format!("{e164:?}").contains("5550199"), "no number in clear: {e164:?}");
        let both = Search::from_args(&args(&["--tenant", "acme", "--email", "Ann@Example.com", "--agent", "ag-7"])).unwrap().unwrap();
        assert_eq!(both.names.len(), 2, "every criterion must hold");
        assert_eq!(both.names[0], Lookups::from_env().name("acme", Lookup::Email("ann@example.com")));
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
