//! writer: crm.writes.<crm> → the CRM (DESIGN §4–§7). One binary, run once per CRM
//! (`writer --crm hubspot`), so each CRM's writers scale on their own consumer lag.

use clap::Parser;
use crm_common::config::CommonArgs;
use crm_common::emit::Emitter;
use crm_common::events::{Crm, Stage};
use crm_common::redis_conn;
use crm_common::redis_group::GroupCommit;
use crm_connectors::bucket::TokenBuckets;
use crm_connectors::claims::{Claims, Timing};
use crm_connectors::people::People;
use crm_connectors::{api, contacts, contract, retry, CrmUrls};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use writer::{process, runtime};

#[derive(Parser)]
#[command(name = "writer", about = "crm.writes.<crm> → the CRM, inside its rate limits, exactly once in effect")]
struct Cli {
    /// The CRM this writer serves.
    #[arg(long, env = "WRITER_CRM")]
    crm: Crm,
    #[command(flatten)]
    common: CommonArgs,
    /// Directory of the field-ownership contracts (`<crm>.toml`).
    #[arg(long, env = "CONTRACTS_DIR", default_value = "contracts")]
    contracts_dir: PathBuf,
    /// Consumer group (default `writer-<crm>`).
    #[arg(long, env = "CONSUMER_GROUP")]
    consumer_group: Option<String>,
    /// Most CRM requests on the wire at once, across all tenants (and idle connections kept
    /// per CRM host).
    #[arg(long, env = "WRITER_HTTP_CONCURRENCY", default_value_t = 64)]
    http_concurrency: usize,
    /// Most messages held in all lanes; past it only tenants holding nothing get more, and
    /// the rest are left in Kafka until there is room (the partitions are never paused).
    #[arg(long, env = "WRITER_MAX_BUFFERED", default_value_t = 10_000)]
    max_buffered: usize,
    /// Most messages one tenant's lane holds (default two full batches); the tenant's next
    /// messages are left in Kafka and read again when its lane is half empty.
    #[arg(long, env = "WRITER_LANE_MAX")]
    lane_max: Option<usize>,
    /// Most lane batches working at once; a batch waiting for tokens, a backoff or another
    /// writer's lease gives its place up meanwhile. Bounds memory by work, not by tenants.
    #[arg(long, env = "WRITER_WORKING_LANES", default_value_t = 256)]
    working_lanes: usize,
    /// How long a tenant's lane waits for work before it closes (it starts again with the
    /// tenant's next request): lanes, and their tasks, are held for sending tenants only.
    #[arg(long, env = "WRITER_LANE_IDLE", default_value = "2m", value_parser = humantime::parse_duration)]
    lane_idle: Duration,
    /// How long a backlog pass may wait for its next offset before the broker is asked
    /// whether it still has it (retention may have deleted left messages).
    #[arg(long, env = "WRITER_PASS_STALL", default_value = "30s", value_parser = humantime::parse_duration)]
    pass_stall: Duration,
    /// How often finished offsets are committed.
    #[arg(long, env = "WRITER_COMMIT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    commit_interval: Duration,
    /// How long a claim is leased to this writer; past it, another writer recovers the key
    /// by a lookup in the CRM.
    #[arg(long, env = "WRITER_LEASE", default_value = "2m", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How long DONE claims are kept in Redis.
    #[arg(long, env = "WRITER_CLAIM_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    claim_retention: Duration,
    /// Transient failures are retried (backoff, full jitter) for this long, then dead-lettered
    /// as RETRIES_EXHAUSTED.
    #[arg(long, env = "WRITER_RETRY_LIMIT", default_value = "10m", value_parser = humantime::parse_duration)]
    retry_limit: Duration,
    /// First retry's cap; each retry doubles it, up to `retry_max_wait`.
    #[arg(long, env = "WRITER_RETRY_BASE", default_value = "200ms", value_parser = humantime::parse_duration)]
    retry_base: Duration,
    #[arg(long, env = "WRITER_RETRY_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    retry_max_wait: Duration,
    /// Per-request timeout.
    #[arg(long, env = "WRITER_HTTP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    http_timeout: Duration,
    /// How long a contact match (or the lack of one) is cached.
    /// How long after a request timed out (or met a 5xx) a CRM may still apply it. A create
    /// whose outcome is unknown is read back only once this has passed, and a recovered
    /// lease is looked up only this long after it ran out: a lookup before then can miss a
    /// write that is still landing.
    #[arg(long, env = "WRITER_LATE_WRITE_HORIZON", default_value = "60s", value_parser = humantime::parse_duration)]
    late_write_horizon: Duration,
    /// How far a source's clock (a call's start) and Redis's may disagree, for deciding
    /// whether the claim store remembers an activity's era.
    #[arg(long, env = "WRITER_CLOCK_SKEW", default_value = "5m", value_parser = humantime::parse_duration)]
    clock_skew: Duration,
    #[arg(long, env = "WRITER_CONTACT_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    contact_ttl: Duration,
    #[arg(long, env = "WRITER_CONTACT_MISS_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    contact_miss_ttl: Duration,
    /// How long an actor's CRM user (found by email) is kept before it is looked up again.
    #[arg(long, env = "WRITER_OWNER_TTL", default_value = "6h", value_parser = humantime::parse_duration)]
    owner_ttl: Duration,
    /// How long "no CRM user has this actor's email" is kept (a new user may be added).
    #[arg(long, env = "WRITER_OWNER_MISS_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    owner_miss_ttl: Duration,
    /// How long a contact's company and open deals are kept before they are read again
    /// (deals open and close: short).
    #[arg(long, env = "WRITER_CONTEXT_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    context_ttl: Duration,
    #[command(flatten)]
    urls: CrmUrls,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let service: &'static str = Box::leak(format!("writer-{}", cli.crm.as_str()).into_boxed_str());
    let _telemetry = crm_common::telemetry::init(service, &cli.common)?;
    // The deployment's contracts; the tenants' field overrides are checked and applied with
    // the tenants file (`tenant_clients::build`): a refused override stops the writer at
    // start with the tenant, kind and field named.
    let contract = contract::Contracts::load(&cli.contracts_dir, cli.crm.as_str())?;
    let (urls, http_timeout) = (cli.urls.clone(), cli.http_timeout);
    crm_connectors::with_connector!(cli.crm, contract, &urls, http_timeout, |c| serve(c, cli, service).await)
}

async fn serve<C: People>(connector: C, cli: Cli, service: &'static str) -> anyhow::Result<()> {
    let crm = connector.crm();
    let connector = Arc::new(connector);
    let tenants = cli.common.live_tenants(crm_connectors::tenant_clients::build(connector.clone()))?;
    let oauth_tenants = {
        let cfg = tenants.current();
        cfg.stage.clients.values().filter(|c| c.as_ref().as_ref().is_ok_and(|c| c.auth.is_oauth())).count()
    };
    let target = cli.common.redis_target()?;
    let redis = target.redacted();
    let conn = redis_conn::connect_lazy(&target).map_err(|e| anyhow::anyhow!("REDIS_URL {redis}: {e}"))?;
    let owner = format!("{service}-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let prefix = cli.common.redis_key_prefix.clone();
    tracing::info!(service, tenants = tenants.current().stage.clients.len(), redis, owner, "writer starting");
    let timing = Timing {
        lease: cli.lease,
        request_timeout: cli.http_timeout,
        late_write_horizon: cli.late_write_horizon,
        clock_skew: cli.clock_skew,
    };
    if timing.effective_lease() > cli.lease {
        tracing::warn!(lease = ?cli.lease, used = ?timing.effective_lease(), "WRITER_LEASE is shorter than a request may take: leases are set longer");
    }
    let claims = Claims::new(conn.clone(), &prefix, &owner, timing, cli.claim_retention);
    let claims_for_people = claims.clone();
    let tokens = crm_connectors::auth::TokenStore::from_env(conn.clone(), &prefix).map_err(|e| anyhow::anyhow!(e))?;
    if tokens.is_none() && oauth_tenants > 0 {
        anyhow::bail!(
            "{oauth_tenants} tenant(s) use OAuth: set {} (32 bytes, base64, from the secret store) so their tokens are shared by every replica, encrypted",
            crm_connectors::auth::TOKEN_KEY_ENV
        );
    }
    let (http, in_flight) = api::Api::http_client(cli.http_timeout, cli.http_concurrency)?;
    // A request's tokens are held until it is answered, or for as long as it can take.
    let buckets = TokenBuckets::new(conn.clone(), &prefix).with_lease(cli.http_timeout);
    let finishing = GroupCommit::new(conn.clone(), vec![claims.done_script().clone(), buckets.settle_script().clone()]);
    let names = contacts::KeyNames::from_env(crm_connectors::contacts::Purpose::CacheKeys);
    let shared = Arc::new(process::Shared {
        kinds: connector.kinds(),
        api: api::Api {
            http,
            in_flight,
            pools: Default::default(),
            buckets,
            backoff: retry::Backoff { base: cli.retry_base, cap: cli.retry_max_wait },
            retry_limit: cli.retry_limit,
            reserve_pct: 0,
            token_wait_limit: None,
            claims: Some(claims.clone()),
            tokens,
        },
        claims,
        owners: contacts::ContactCache::owners(conn.clone(), prefix.clone(), names.clone(), cli.owner_ttl, cli.owner_miss_ttl),
        context: contacts::ContactCache::context(conn.clone(), prefix.clone(), names.clone(), cli.context_ttl),
        contacts: contacts::ContactCache::contacts(conn, prefix, names, cli.contact_ttl, cli.contact_miss_ttl),
        tenants,
        tenant_wait: cli.common.tenant_wait,
        emit: Emitter::new(Stage::Writer, cli.common.topics.clone()),
        crm,
        connector,
        finishing,
        person_claims: crm_connectors::person_claims::PersonClaims::new(claims_for_people, cli.claim_retention),
    });
    let cfg = runtime::RuntimeConfig {
        service,
        group: cli.consumer_group.clone().unwrap_or_else(|| service.to_string()),
        input_topic: cli.common.topics.crm_writes(crm),
        max_buffered: cli.max_buffered.max(1),
        lane_max: cli.lane_max.unwrap_or(2 * shared.connector.batch_max()).max(1),
        working_lanes: cli.working_lanes.max(1),
        commit_interval: cli.commit_interval,
        drain_timeout: Duration::from_secs(25),
        lane_idle: cli.lane_idle,
        pass_stall: cli.pass_stall,
    };
    runtime::run(shared, &cli.common, cfg, crm_common::shutdown::service()).await
}
