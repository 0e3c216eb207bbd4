//! `crm-sync tenants check [--tenant T] [--crm C] [--json]`: before a tenant's first activity,
//! whether each of its CRM connections will work, and what to do where it will not. Per
//! connection: the credentials are there and the CRM takes them; the CRM lets them read the
//! objects the contracts write and, where the CRM says before a write, write them (scopes,
//! permissions); every field the contracts name exists, the key field first; the plan's
//! limits are those the CRM states in its answers. Each check reads the CRM's schema through
//! the same client, buckets and OAuth token store as the writers, so it costs a request or
//! two per kind, counted with the writers' requests.

use crm_common::config::CommonArgs;
use crm_common::events::{ActivityKind, Crm, DlqReason};
use crm_common::tenants::{CrmConnection, ResolvedTenant, Tenants};
use crm_connectors::api::{Failure, Policy, RequestClass, StatedLimit};
use crm_connectors::bucket::Limit;
use crm_connectors::connector::{Inspect, KeyFieldCheck, Schema, WriteAccess};
use crm_connectors::people::People;
use std::time::Duration;

#[derive(clap::Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    cmd: TenantsCmd,
}

#[derive(clap::Subcommand)]
enum TenantsCmd {
    /// Whether each tenant's CRM connections will work: credentials, access, fields.
    Check(CheckArgs),
    /// Create what the contracts need in a tenant's CRM where its API allows: the key field.
    Provision(ProvisionArgs),
}

#[derive(clap::Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    opts: reconciler::Options,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    crm: Crm,
    /// Say what would be created, and the requests, without sending any write.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    opts: reconciler::Options,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only these CRMs (repeat or comma-separate).
    #[arg(long = "crm", value_delimiter = ',')]
    crms: Vec<Crm>,
    /// One JSON object per check instead of text.
    #[arg(long)]
    json: bool,
}

/// What was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The secret is there and makes a client.
    Credentials,
    /// The CRM answers the credentials and lets them read the kind's object.
    Access,
    /// The contract's fields exist on the kind's object.
    Fields,
    /// The key field keeps one record per key (unique, external id).
    KeyField,
    /// The credentials may create and change the kind's records, where the CRM says.
    Write,
    /// The plan's limits are those the CRM states for the account.
    Limits,
    /// The lead assignment rule the connection names exists (`leads.assignment_rule`).
    LeadAssignment,
    /// The key field created (`provision`).
    Provision,
}

/// One check's result, with the fix when it failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub tenant: String,
    pub crm: Crm,
    pub check: Check,
    pub kind: Option<ActivityKind>,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

pub fn run(args: TenantsArgs) -> anyhow::Result<()> {
    match args.cmd {
        TenantsCmd::Check(args) => check(args),
        TenantsCmd::Provision(args) => provision(args),
    }
}

fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let findings = rt.block_on(async {
        let tenants = Tenants::load(&args.common.tenants_config)?;
        let Some(t) = tenants.get(&args.tenant) else {
            anyhow::bail!("tenant {:?} is not in {}", args.tenant, args.common.tenants_config.display())
        };
        let Some(conn) = t.crms.get(&args.crm) else {
            anyhow::bail!("tenant {:?} has no {} connection in {}", args.tenant, args.crm.as_str(), args.common.tenants_config.display())
        };
        let api = check_api(&args.common, &args.opts)?;
        let contracts = crm_connectors::contract::Contracts::load(&args.opts.contracts_dir, args.crm.as_str())?;
        let found: Vec<Finding> = crm_connectors::with_connector!(args.crm, contracts, &args.opts.urls, args.opts.http_timeout, |c| {
            provision_connection(&c, &api, &args.tenant, t, conn, args.dry_run).await
        });
        Ok(found)
    })?;
    print!("{}", render(&findings));
    if findings.iter().any(|f| !f.ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// The client `check` and `provision` send through: the writers' buckets and token store, so
/// their few requests count with the writers'; no share held back (a plan set above the
/// account's real limit leaves a reconciler's share spent, and the check is what says so);
/// and a short limit on retries and on waits for tokens: a CRM that does not answer, or a
/// limit that is spent, is reported, not waited out.
fn check_api(common: &CommonArgs, opts: &reconciler::Options) -> anyhow::Result<crm_connectors::api::Api> {
    let target = common.redis_target()?;
    let conn = crm_common::redis_conn::connect_lazy(&target).map_err(|e| anyhow::anyhow!("REDIS_URL {}: {e}", target.redacted()))?;
    let limit = opts.retry_limit.min(Duration::from_secs(15));
    let opts = reconciler::Options { retry_limit: limit, reserve_pct: 0, ..opts.clone() };
    let api = reconciler::api(conn, &common.redis_key_prefix, &opts)?;
    Ok(crm_connectors::api::Api { token_wait_limit: Some(limit), ..api })
}

/// For each kind the connection takes: the key field is there already, or is created (or,
/// with `dry_run`, what would be sent), or why it cannot be and how to make it by hand.
async fn provision_connection<C: Inspect>(
    c: &C,
    api: &crm_connectors::api::Api,
    tenant: &str,
    t: &ResolvedTenant,
    conn: &CrmConnection,
    dry_run: bool,
) -> Vec<Finding> {
    use crm_connectors::connector::Provisioned;
    let crm = c.crm();
    let finding = |kind, ok, detail: String, fix: Option<String>| Finding {
        tenant: tenant.to_string(),
        crm,
        check: Check::Provision,
        kind: Some(kind),
        ok,
        detail,
        fix,
    };
    let client = match c.tenant(t, conn) {
        Ok(client) => client,
        Err(why) => {
            let fix = format!("put the credentials in the secret {} (crm-sync tenants check says more)", conn.credentials_secret);
            return vec![Finding {
                tenant: tenant.to_string(),
                crm,
                check: Check::Credentials,
                kind: None,
                ok: false,
                detail: why,
                fix: Some(fix),
            }];
        }
    };
    let kinds = kinds_of(c, conn);
    let mut out = vec![];
    for kind in kinds {
        let contract = c.contract_of(kind);
        let (object, key) = (&contract.object, &contract.key_field);
        let mut log = vec![];
        let fields = match c.schema(api, &client, kind, &mut log).await {
            Ok(s) => s.map(|s| s.fields),
            Err(f) => {
                out.push(finding(kind, false, f.detail, Some("crm-sync tenants check says what to fix first".into())));
                continue;
            }
        };
        match fields {
            // A lead's fields are the people's (below).
            None if kind == ActivityKind::Lead => {}
            None => {
                out.push(finding(kind, true, format!("nothing to create: {object} has no custom fields (the key rides in {key})"), None))
            }
            Some(f) if f.contains(key) => out.push(finding(kind, true, format!("{object}.{key} exists already"), None)),
            Some(_) if dry_run => {
                let detail = match c.provision_request(kind) {
                    Some(r) => format!(
                        "would create {object}.{key}: {} {} {}",
                        r.method,
                        r.path,
                        r.body.as_deref().map(String::from_utf8_lossy).unwrap_or_default()
                    ),
                    None => format!("{object}.{key} is missing and is not created through {}'s API here", crm.as_str()),
                };
                out.push(finding(kind, true, detail, None));
            }
            Some(_) => match c.provision_key_field(api, &client, kind, &mut log).await {
                // Not unique is said in the detail: nothing to fix, the claims keep writes single.
                Ok(Provisioned::Created { detail, .. }) => out.push(finding(kind, true, detail, None)),
                Ok(Provisioned::ByHand(how)) => out.push(finding(kind, false, format!("{object}.{key} is missing"), Some(how))),
                Err(f) => {
                    let how = format!(
                        "create {key} on {object} by hand ({}), then run crm-sync tenants check",
                        crm_connectors::connector::key_field_spec(crm)
                    );
                    out.push(finding(kind, false, format!("{} refused to create {object}.{key}: {}", crm.as_str(), f.detail), Some(how)));
                }
            },
        }
        // A lead contract's own fields (attribution, the lead's extras) on the CRM's people.
        if kind == ActivityKind::Lead {
            for (ok, detail, fix) in provision_people_fields(c, api, &client, contract, dry_run, &mut log).await {
                out.push(finding(kind, ok, detail, fix));
            }
        }
    }
    out
}

/// The lead contract's fields on the CRM's people (both objects where it keeps two, less
/// those `only_on` the other), each missing one made as a text field, or, with `dry_run`,
/// said it would be; one finding per object in order, or per field made or refused.
async fn provision_people_fields<C: Inspect>(
    c: &C,
    api: &crm_connectors::api::Api,
    client: &crm_connectors::connector::TenantOf<C>,
    contract: &crm_connectors::contract::Contract,
    dry_run: bool,
    log: &mut Vec<crm_connectors::api::Exchange>,
) -> Vec<(bool, String, Option<String>)> {
    use crm_connectors::connector::Provisioned;
    let crm = c.crm().as_str();
    let made_as = c.creates_person_as();
    let mut out = vec![];
    for object in [made_as, made_as.other()] {
        let (name, fields) = match c.people_fields(api, client, object, log).await {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(f) => {
                let detail = format!("could not read the fields of {crm}'s {} people: {}", object.as_str(), f.detail);
                out.push((false, detail, Some("crm-sync tenants check says what to fix first".into())));
                continue;
            }
        };
        let missing = lead_fields_missing(contract, &fields, object);
        if missing.is_empty() {
            out.push((true, format!("the lead contract's fields exist on {name}"), None));
        }
        for f in missing {
            if dry_run {
                out.push((true, format!("would create {name}.{f} (text)"), None));
                continue;
            }
            match c.provision_person_field(api, client, object, &f, log).await {
                Ok(Provisioned::Created { detail, .. }) => out.push((true, detail, None)),
                Ok(Provisioned::ByHand(how)) => out.push((false, format!("{name}.{f} is missing"), Some(how))),
                Err(e) => out.push((
                    false,
                    format!("{crm} refused to create {name}.{f}: {}", e.detail),
                    Some(format!("create {f} on {name} by hand (text, 255), then run crm-sync tenants check")),
                )),
            }
        }
    }
    out
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let findings = rt.block_on(check_all(&args))?;
    if args.json {
        for f in &findings {
            println!("{}", serde_json::to_string(f)?);
        }
    } else {
        print!("{}", render(&findings));
    }
    if findings.iter().any(|f| !f.ok) {
        std::process::exit(1);
    }
    Ok(())
}

async fn check_all(args: &CheckArgs) -> anyhow::Result<Vec<Finding>> {
    let tenants = Tenants::load(&args.common.tenants_config)?;
    if let Some(t) = &args.tenant {
        anyhow::ensure!(tenants.get(t).is_some(), "tenant {t:?} is not in {}", args.common.tenants_config.display());
    }
    let api = check_api(&args.common, &args.opts)?;
    let opts = &args.opts;
    let mut out = vec![];
    for crm in [Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive] {
        if !args.crms.is_empty() && !args.crms.contains(&crm) {
            continue;
        }
        let connected: Vec<(String, &ResolvedTenant, &CrmConnection)> = tenants
            .ids()
            .into_iter()
            .filter(|id| args.tenant.as_ref().is_none_or(|t| t == id))
            .filter_map(|id| {
                let t = tenants.get(&id)?;
                t.crms.get(&crm).map(|c| (id.clone(), t, c))
            })
            .collect();
        if connected.is_empty() {
            continue;
        }
        let contracts = crm_connectors::contract::Contracts::load(&opts.contracts_dir, crm.as_str())?;
        let found: Vec<Finding> = crm_connectors::with_connector!(crm, contracts, &opts.urls, opts.http_timeout, |c| {
            let mut found = vec![];
            for (id, t, conn) in &connected {
                found.extend(check_connection(&c, &api, id, t, conn).await);
            }
            found
        });
        out.extend(found);
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no CRM connection to check{} in {}",
        args.tenant.as_ref().map(|t| format!(" for tenant {t:?}")).unwrap_or_default(),
        args.common.tenants_config.display()
    );
    Ok(out)
}

/// The checks of one tenant's connection to the connector's CRM, in order; the first that
/// fails ends those that depend on it (no access, no field check).
async fn check_connection<C: Inspect + People>(
    c: &C,
    api: &crm_connectors::api::Api,
    tenant: &str,
    t: &ResolvedTenant,
    conn: &CrmConnection,
) -> Vec<Finding> {
    let crm = c.crm();
    let finding =
        |check, kind, ok, detail: String, fix: Option<String>| Finding { tenant: tenant.to_string(), crm, check, kind, ok, detail, fix };
    let secret = &conn.credentials_secret;
    let client = match c.tenant(t, conn) {
        Ok(client) => client,
        Err(why) => {
            let fix = format!(
                "put the credentials in the secret {secret}: a file of that name in CRM_SYNC_SECRETS_DIR, or a variable (a token, or an OAuth client as JSON: README \"Configuration\")"
            );
            return vec![finding(Check::Credentials, None, false, why, Some(fix))];
        }
    };
    let mut out = vec![finding(Check::Credentials, None, true, format!("secret {secret} read"), None)];
    let kinds = kinds_of(c, conn);
    // Every answer of the checks, for the limits the CRM states in them.
    let mut log = vec![];
    let mut answered = false;
    for kind in kinds {
        let contract = c.contract_of(kind);
        let object = &contract.object;
        let unanswered = |f: &Failure| {
            let fix = match f.reason {
                DlqReason::AuthFailed => format!(
                    "{} refused the credentials in {secret}: issue a new token (or authorize the app again) and update the secret; running services read it again within a minute",
                    crm.as_str()
                ),
                DlqReason::PermissionDenied => access_fix(crm, object),
                _ => format!("the {} did not answer as expected: check its URL and status, then run this again", crm.as_str()),
            };
            finding(Check::Access, Some(kind), false, f.detail.clone(), Some(fix))
        };
        let mut read = c.schema(api, &client, kind, &mut log).await;
        // What the credentials may write, where the CRM says before a write: in the schema
        // read, or a read of its own. A CRM whose object has no schema to read (Pipedrive)
        // answers the credentials here first.
        let write = match &read {
            Ok(Some(Schema { write: Some(w), .. })) => Some(Ok(w.clone())),
            Ok(_) => Some(c.write_access(api, &client, kind, &mut log).await),
            Err(_) => None,
        };
        if let (Ok(None), Some(Err(f))) = (&read, &write) {
            read = Err(f.clone());
        }
        answered |= read.is_ok();
        match read {
            Err(f) => {
                out.push(unanswered(&f));
                // Without access to one object the rest tell nothing new about the credentials.
                if matches!(f.reason, DlqReason::AuthFailed) {
                    break;
                }
                continue;
            }
            Ok(None) => {
                out.push(finding(Check::Access, Some(kind), true, format!("{} answered the credentials", crm.as_str()), None));
                // A lead's fields are its people's, read where the CRM lists them (Pipedrive's
                // person fields) though its activity schema has none.
                let people = match kind {
                    ActivityKind::Lead => people_fields_finding(c, api, &client, contract, c.creates_person_as(), &mut log).await,
                    _ => None,
                };
                let (ok, detail, fix) = people.unwrap_or_else(|| {
                    let detail = match &contract.key_marker {
                        Some(marker) => format!("no custom fields on {object}: the key rides in {} after {marker:?}", contract.key_field),
                        None => format!("no custom fields on {object} to check"),
                    };
                    (true, detail, None)
                });
                out.push(finding(Check::Fields, Some(kind), ok, detail, fix));
            }
            Ok(Some(schema)) => {
                out.push(finding(Check::Access, Some(kind), true, format!("{object} readable ({} fields)", schema.fields.len()), None));
                // A lead contract's field that only the CRM's other person object has (a Zoho
                // contact's Title) is not looked for on the object new people are made in.
                let missing = match kind {
                    ActivityKind::Lead => lead_fields_missing(contract, &schema.fields, c.creates_person_as()),
                    _ => reconciler::compare::missing_fields(contract, &schema.fields),
                };
                if missing.is_empty() {
                    let detail = format!(
                        "key field {} and the {} other contract fields exist on {object}",
                        contract.key_field,
                        contract.fields.len() - 1
                    );
                    out.push(finding(Check::Fields, Some(kind), true, detail, None));
                    out.push(key_field_finding(&contract.key_field, crm, kind, schema.key_field, &finding));
                } else {
                    let key_missing = missing.contains(&contract.key_field);
                    let detail = format!("{object} has no field {}", missing.join(", "));
                    let fix = if key_missing {
                        format!(
                            "create the key field {} on {object}: crm-sync tenants provision --tenant {tenant} --crm {} does it where the CRM's API allows, else by hand ({}); nothing can be written for this tenant until it exists",
                            contract.key_field,
                            crm.as_str(),
                            crm_connectors::connector::key_field_spec(crm)
                        )
                    } else {
                        format!(
                            "create the field{} on {object}, or remove them from the contract (contracts/{}*.toml)",
                            if missing.len() > 1 { "s" } else { "" },
                            crm.as_str()
                        )
                    };
                    out.push(finding(Check::Fields, Some(kind), false, detail, Some(fix)));
                }
                if kind == ActivityKind::Lead {
                    let other = c.creates_person_as().other();
                    if let Some((ok, detail, fix)) = people_fields_finding(c, api, &client, contract, other, &mut log).await {
                        out.push(finding(Check::Fields, Some(kind), ok, detail, fix));
                    }
                }
            }
        }
        match write {
            Some(Ok(WriteAccess::Granted(what) | WriteAccess::NotShown(what))) => {
                out.push(finding(Check::Write, Some(kind), true, what, None))
            }
            Some(Ok(WriteAccess::Denied(what))) => out.push(finding(Check::Write, Some(kind), false, what, Some(access_fix(crm, object)))),
            Some(Err(f)) => out.push(finding(
                Check::Write,
                Some(kind),
                false,
                format!("could not tell: {}", f.detail),
                Some("run the check again; if it persists, see the CRM's status".into()),
            )),
            None => {}
        }
    }
    if let (true, Some(rule)) = (conn.activities.contains(&ActivityKind::Lead), conn.leads.assignment_rule.as_deref()) {
        out.push(match c.assignment_rules(api, &client, &mut log).await {
            Ok(Some(rules)) => match rules.iter().find(|(id, _)| id == rule) {
                Some((_, name)) => finding(Check::LeadAssignment, Some(ActivityKind::Lead), true, format!("lead assignment rule {rule} ({name}) exists"), None),
                None => finding(
                    Check::LeadAssignment,
                    Some(ActivityKind::Lead),
                    false,
                    format!(
                        "{} has no lead assignment rule {rule} (it has {}): every new lead would be refused",
                        crm.as_str(),
                        if rules.is_empty() { "none".to_string() } else { rules.iter().map(|(id, n)| format!("{id} {n:?}")).collect::<Vec<_>>().join(", ") }
                    ),
                    Some(format!("set crms.{}.leads.assignment_rule to one of the org's rules, or choose leads.owner = {{ fixed = ... }}", crm.as_str())),
                ),
            },
            Ok(None) => finding(Check::LeadAssignment, Some(ActivityKind::Lead), true, format!("{} does not list its rules; not checked", crm.as_str()), None),
            Err(f) => finding(
                Check::LeadAssignment,
                Some(ActivityKind::Lead),
                false,
                format!("could not list the lead assignment rules: {}", f.detail),
                Some("grant the credentials read access to the CRM's assignment rules (Zoho: ZohoCRM.settings.automation.READ), then run this again".into()),
            ),
        });
    }
    if answered {
        let stated: Vec<StatedLimit> = log.iter().flat_map(|e| e.stated_limits.iter().cloned()).collect();
        out.extend(
            limits_findings(&client.policy, crm, conn, &stated)
                .into_iter()
                .map(|(ok, detail, fix)| finding(Check::Limits, None, ok, detail, fix)),
        );
    }
    out
}

/// The plan's limits (the connection's `plan` and `limits`, as the buckets hold them) against
/// those the CRM stated in its answers to the checks, the last stated of each: a plan above
/// the account's real limit fails (the writers would meet the CRM's limit first: throttled or,
/// for a daily allowance, refused until it resets); one below is said, with the setting that
/// uses the rest. (ok, detail, fix) each.
fn limits_findings(policy: &impl Policy, crm: Crm, conn: &CrmConnection, stated: &[StatedLimit]) -> Vec<(bool, String, Option<String>)> {
    let planned: Vec<Limit> = [RequestClass::Create, RequestClass::Search].iter().flat_map(|c| policy.buckets(*c).limits).collect();
    let mut last: Vec<&StatedLimit> = vec![];
    for s in stated {
        last.retain(|l| l.limit != s.limit);
        last.push(s);
    }
    if last.is_empty() {
        return vec![(
            true,
            format!("{} stated no limits in its answers: the plan's ({}) are used as configured", crm.as_str(), conn.plan),
            None,
        )];
    }
    let mut out = vec![];
    for s in last {
        let Some(plan) = planned.iter().find(|l| l.name() == s.limit).map(Limit::max) else { continue };
        let name = s.limit;
        if s.max == plan {
            out.push((true, format!("{name}: {} as {} states", s.max, crm.as_str()), None));
        } else if s.max < plan {
            let detail = format!(
                "{name}: the plan ({}) gives {plan}, {} states {} for this account: the writers would meet {}'s limit first",
                conn.plan,
                crm.as_str(),
                s.max,
                crm.as_str()
            );
            let fix = format!(
                "set the plan the account has, or limits.{} = {} in the connection's limits (TENANTS_CONFIG); running services read it again",
                s.setting, s.max
            );
            out.push((false, detail, Some(fix)));
        } else {
            out.push((
                true,
                format!(
                    "{name}: {} states {}, the plan ({}) gives {plan}: limits.{} = {} would use the rest",
                    crm.as_str(),
                    s.max,
                    conn.plan,
                    s.setting,
                    s.max
                ),
                None,
            ));
        }
    }
    out
}

/// What the CRM's schema says of the key field: one record per key, or not (said, not a
/// failure: the claims keep writes single), or not usable as the writer uses it (a failure).
fn key_field_finding(
    key: &str,
    crm: Crm,
    kind: ActivityKind,
    said: Option<KeyFieldCheck>,
    finding: &impl Fn(Check, Option<ActivityKind>, bool, String, Option<String>) -> Finding,
) -> Finding {
    let (ok, detail, fix) = match said {
        // A person has no key of crm-sync's: the lead contract's key field is their email,
        // and the person claims keep two leads of one person from making two people.
        _ if kind == ActivityKind::Lead => (true, format!("{key}: who a person is (their email), not a key of crm-sync's"), None),
        Some(KeyFieldCheck::Enforced) => (true, format!("{key}: the CRM refuses a second record with one key"), None),
        Some(KeyFieldCheck::NotEnforced(what)) => (true, what, None),
        Some(KeyFieldCheck::Unusable(why)) => {
            (false, why, Some(format!("change {key} as it says ({})", crm_connectors::connector::key_field_spec(crm))))
        }
        None => (true, format!("{key}: nothing the CRM enforces to check"), None),
    };
    finding(Check::KeyField, Some(kind), ok, detail, fix)
}

/// The lead contract's fields `object`'s people lack (`fields` theirs), but those `only_on`
/// the CRM's other person object.
fn lead_fields_missing(
    contract: &crm_connectors::contract::Contract,
    fields: &std::collections::BTreeSet<String>,
    object: crm_connectors::person::PersonObject,
) -> Vec<String> {
    let mut missing = reconciler::compare::missing_fields(contract, fields);
    missing.retain(|f| contract.fields.get(f).and_then(|r| r.only_on.as_deref()).is_none_or(|o| o == object.as_str()));
    missing
}

/// A lead contract's fields on the CRM's `object` people (each but those `only_on` the
/// other object): where people are two objects a lead matching a contact updates it with
/// the same fields, so they must be on both, or every lead of such a person is refused.
/// None where the CRM has no such object or does not list its fields.
async fn people_fields_finding<C: Inspect>(
    c: &C,
    api: &crm_connectors::api::Api,
    client: &crm_connectors::connector::TenantOf<C>,
    contract: &crm_connectors::contract::Contract,
    object: crm_connectors::person::PersonObject,
    log: &mut Vec<crm_connectors::api::Exchange>,
) -> Option<(bool, String, Option<String>)> {
    let (name, fields) = match c.people_fields(api, client, object, log).await {
        Ok(Some(found)) => found,
        Ok(None) => return None,
        Err(f) => return Some((false, format!("could not read the fields of the CRM's {} people: {}", object.as_str(), f.detail), None)),
    };
    let missing = lead_fields_missing(contract, &fields, object);
    Some(if missing.is_empty() {
        (true, format!("the lead contract's fields for {} people exist on {name}", object.as_str()), None)
    } else {
        (
            false,
            format!("{name} has no field {}: a lead whose person is a {} there cannot be written", missing.join(", "), object.as_str()),
            Some(format!(
                "create the field{} on {name} (crm-sync tenants provision --crm {} makes them), or leave them out of contracts/{}.lead.toml",
                if missing.len() > 1 { "s" } else { "" },
                c.crm().as_str(),
                c.crm().as_str()
            )),
        )
    })
}

/// The kinds a connection takes that this CRM's writer writes, in order.
fn kinds_of<C: Inspect>(c: &C, conn: &CrmConnection) -> Vec<ActivityKind> {
    let mut kinds: Vec<ActivityKind> = conn.activities.iter().copied().filter(|k| c.kinds().contains(k)).collect();
    kinds.sort();
    kinds
}

/// Where a CRM grants what the writers need.
fn access_fix(crm: Crm, object: &str) -> String {
    match crm {
        Crm::Hubspot => format!(
            "give the private app (or the OAuth app's install) the scopes to read and write {object} and their properties: crm.objects.contacts.read and .write, crm.schemas.contacts.read, and sales-email-read for emails (Settings → Integrations → Private apps → Scopes)"
        ),
        Crm::Salesforce => format!(
            "give the integration user API Enabled and Read/Create/Edit on {object} (its profile or a permission set), and field-level access to the contract's fields"
        ),
        Crm::Zoho => format!(
            "authorize the client again with the scopes ZohoCRM.modules.ALL, ZohoCRM.settings.fields.READ and ZohoCRM.users.READ (the {object} module), and update the refresh token"
        ),
        Crm::Pipedrive | Crm::Unknown => {
            format!("the token's user must be able to see and edit {object}: give them a permission set that does, or use an admin's token")
        }
    }
}

/// A line per check, failures with their fix under them, and a last line counting them.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let kind = f.kind.map_or("", |k| k.as_str());
        let check = match f.check {
            Check::Credentials => "credentials",
            Check::Access => "access",
            Check::Fields => "fields",
            Check::KeyField => "key field",
            Check::Write => "write",
            Check::Limits => "limits",
            Check::LeadAssignment => "assignment",
            Check::Provision => "provision",
        };
        out += &format!(
            "{:<12} {:<11} {:<12} {:<8} {:<4}  {}\n",
            f.tenant,
            f.crm.as_str(),
            check,
            kind,
            if f.ok { "ok" } else { "FAIL" },
            f.detail
        );
        if let Some(fix) = &f.fix {
            out += &format!("{:>52}fix: {fix}\n", "");
        }
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    out += &if failed == 0 {
        format!("all {} checks passed\n", findings.len())
    } else {
        format!("{failed} of {} checks failed\n", findings.len())
    };
    out
}
