//! The one way every service connects to Redis: one node (the default) or a Redis Cluster,
//! behind one connection type, [`RedisConn`], that every store (claims, buckets, dedup marks,
//! contact caches, OAuth tokens) is written against.
//!
//! - **Lazy, with timeouts.** A service starts while Redis is down, and a request fails within
//!   seconds rather than hanging on a dead socket (callers retry with their own backoff).
//! - **Cluster.** Every key carries its tenant as a hash tag (`redis_keys`), so each Lua script
//!   and each multi-key command touches one slot, and the cluster client routes it to the node
//!   that owns the slot (following MOVED/ASK while slots migrate). What does not fit one slot is
//!   split by the caller: the deduper sends one pipeline per tenant (`dedup`), and
//!   [`delete_prefix`] scans every primary. Scripts are loaded on every node (`SCRIPT LOAD`
//!   goes to all of them) when a node answers NOSCRIPT.
//!
//! Also the password-free form of a URL for logs, and prefix cleanup for dev runs and benchmarks.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests this process sent to Redis, each answered in one round trip (a pipeline is one;
/// a script that had to be loaded first is three). Exported as `crm_sync.redis.round_trips`
/// and logged when a service stops; `bench tenants` divides it by the records written.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(Ordering::Relaxed)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where Redis is: one node, or a cluster reached through one or more of its nodes (seeds; the
/// client learns the rest from the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Node(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `urls` is one URL, or (with `cluster`) a comma-separated list of seed nodes
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`). Several URLs without `cluster` is an
    /// error: a list of single nodes would split one tenant's keys between them.
    pub fn new(urls: &str, cluster: bool) -> Result<RedisTarget, String> {
        let mut list: Vec<String> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect();
        if list.is_empty() {
            return Err("REDIS_URL is empty".into());
        }
        for u in &list {
            redis::Client::open(u.as_str()).map_err(|e| format!("REDIS_URL {}: {e}", redact_url(u)))?;
        }
        match (cluster, list.len()) {
            (true, _) => Ok(RedisTarget::Cluster(list)),
            (false, 1) => Ok(RedisTarget::Node(list.swap_remove(0))),
            (false, n) => Err(format!("REDIS_URL lists {n} nodes; set REDIS_CLUSTER=true for a Redis Cluster (one node otherwise)")),
        }
    }

    /// The target with passwords masked, for logs and error messages.
    pub fn redacted(&self) -> String {
        match self {
            RedisTarget::Node(u) => redact_url(u),
            RedisTarget::Cluster(us) => format!("cluster {}", us.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")),
        }
    }
}

/// A connection to one node or to a cluster; cheap to clone (clones share the connections).
#[derive(Clone)]
pub enum RedisConn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl From<ConnectionManager> for RedisConn {
    fn from(c: ConnectionManager) -> RedisConn {
        RedisConn::Node(c)
    }
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        match self {
            RedisConn::Node(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        match self {
            RedisConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Node(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// A private CA for `rediss://` (PEM; else the system's roots are trusted), as
/// `PGSSLROOTCERT` is for PostgreSQL.
pub const TLS_CA_FILE_ENV: &str = "REDIS_TLS_CA_FILE";
/// A client certificate and its key (PEM), for a server that asks for one
/// (`tls-auth-clients yes`).
pub const TLS_CERT_FILE_ENV: &str = "REDIS_TLS_CERT_FILE";
pub const TLS_KEY_FILE_ENV: &str = "REDIS_TLS_KEY_FILE";

/// The TLS material the environment names, if any: read once per connection set-up, so a
/// file missing or half given is an error at start, not a silent fall back to the system's
/// roots or to no client certificate.
fn tls_certificates() -> redis::RedisResult<Option<redis::TlsCertificates>> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let read = |name: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "unreadable TLS file",
                format!("{name}={}: {e}", path.display()),
            ))
        })
    };
    let (ca, cert, key) = (var(TLS_CA_FILE_ENV), var(TLS_CERT_FILE_ENV), var(TLS_KEY_FILE_ENV));
    let client_tls = match (cert, key) {
        (Some(c), Some(k)) => {
            Some(redis::ClientTlsConfig { client_cert: read(TLS_CERT_FILE_ENV, &c)?, client_key: read(TLS_KEY_FILE_ENV, &k)? })
        }
        (None, None) => None,
        _ => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a client certificate needs both files",
                format!("set both {TLS_CERT_FILE_ENV} and {TLS_KEY_FILE_ENV}, or neither"),
            )))
        }
    };
    let root_cert = ca.map(|p| read(TLS_CA_FILE_ENV, &p)).transpose()?;
    Ok((client_tls.is_some() || root_cert.is_some()).then_some(redis::TlsCertificates { client_tls, root_cert }))
}

/// Connects on first use; requests time out (connect 2 s, response 5 s). Must be called inside
/// a tokio runtime.
pub fn connect_lazy(target: &RedisTarget) -> redis::RedisResult<RedisConn> {
    crate::telemetry::redis_metrics();
    let tls = tls_certificates()?;
    match target {
        RedisTarget::Node(url) => {
            let client = match tls {
                Some(_) if !url.starts_with("rediss://") => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "REDIS_TLS_* files are set for a plain connection",
                        format!(
                            "REDIS_URL {} is not rediss://: use rediss:// for TLS, or unset the REDIS_TLS_* variables",
                            redact_url(url)
                        ),
                    )))
                }
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs)?,
                None => redis::Client::open(url.as_str())?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Ok(RedisConn::Node(ConnectionManager::new_lazy_with_config(client, config)?))
        }
        RedisTarget::Cluster(urls) => {
            // Retries cover MOVED/ASK and a primary's failover; the caller's own backoff
            // covers the rest, as for one node.
            if tls.is_some() {
                // The cluster client takes certificates only when built with rustls; ours is
                // built with native-tls (OpenSSL), which reads a private CA from SSL_CERT_FILE.
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "REDIS_TLS_* files are for one node",
                    format!(
                        "with REDIS_CLUSTER, trust a private CA through SSL_CERT_FILE (OpenSSL) instead of {TLS_CA_FILE_ENV}; client certificates are not supported"
                    ),
                )));
            }
            let client =
                redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str)).retries(3).max_retry_wait(1000).build()?;
            let config =
                redis::cluster::ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT).set_response_timeout(RESPONSE_TIMEOUT);
            Ok(RedisConn::Cluster(client.get_pending_async_connection_with_config(config)))
        }
    }
}

/// Sends `pipe`, in one round trip, where it holds calls (`EVALSHA`) of one script beside
/// plain commands: a claim with the cache reads its batch needs, or a batch's DONE with what
/// it learned. A Redis that has not cached the script (fresh, restarted, a new cluster node)
/// answers NOSCRIPT to each call and runs none of them; the script is then loaded (on a
/// cluster, on every node) and the whole pipeline sent again. Its plain commands may so run
/// twice: only reads and idempotent writes (SET) belong beside the script. One script per
/// pipeline, unless every one may run twice (`query_with_scripts`).
pub async fn query_with_script<T: redis::FromRedisValue>(
    conn: &RedisConn,
    pipe: &Pipeline,
    script: &redis::Script,
) -> redis::RedisResult<T> {
    query_with_scripts(conn, pipe, &[script]).await
}

/// `query_with_script` for a pipeline with calls of several scripts: when one answers
/// NOSCRIPT another may have run, and the resend runs it again, so every script here must be
/// one whose second run changes nothing that matters (a batch's DONE, settling its tokens).
pub async fn query_with_scripts<T: redis::FromRedisValue>(
    conn: &RedisConn,
    pipe: &Pipeline,
    scripts: &[&redis::Script],
) -> redis::RedisResult<T> {
    let mut conn = conn.clone();
    match pipe.query_async(&mut conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            for script in scripts {
                script.prepare_invoke().load_async(&mut conn).await?;
            }
            pipe.query_async(&mut conn).await
        }
        other => other,
    }
}

/// Adds a call of `script` (`EVALSHA`) with these keys to `pipe`, for [`query_with_script`];
/// the script's arguments follow (`.arg` on the answer adds to this call).
pub fn add_script_call<'p, K: redis::ToRedisArgs>(pipe: &'p mut Pipeline, script: &redis::Script, keys: &[K]) -> &'p mut Pipeline {
    pipe.cmd("EVALSHA").arg(script.get_hash()).arg(keys.len()).arg(keys)
}

/// Connects now and fails if Redis (every node of a cluster) does not answer a PING.
pub async fn connect(target: &RedisTarget) -> redis::RedisResult<RedisConn> {
    let mut conn = connect_lazy(target)?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
}

/// A single node at `url` (benchmarks and tools that take one URL).
pub async fn connect_node(url: &str) -> redis::RedisResult<RedisConn> {
    connect(&RedisTarget::Node(url.to_string())).await
}

/// `url` without its password, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

/// Deletes every key under `prefix:` (dev runs and benchmarks clean up after themselves).
/// SCAN, not KEYS, so a large Redis is not blocked; on a cluster, on every primary.
pub async fn delete_prefix(conn: &RedisConn, prefix: &str) -> redis::RedisResult<u64> {
    let mut conn = conn.clone();
    let nodes = match &mut conn {
        RedisConn::Node(_) => vec![None],
        RedisConn::Cluster(c) => primaries(c).await?.into_iter().map(Some).collect(),
    };
    let mut deleted = 0u64;
    for node in nodes {
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(format!("{prefix}:*")).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<String>) = match (&mut conn, &node) {
                (RedisConn::Cluster(c), Some((host, port))) => {
                    let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
                    redis::from_redis_value(c.route_command(scan, at).await?)?
                }
                _ => scan.query_async(&mut conn).await?,
            };
            if !keys.is_empty() {
                // On a cluster the client splits UNLINK by slot and sums the replies.
                let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(deleted)
}

/// The cluster's primaries that are up, as (host, port), from `CLUSTER NODES`.
async fn primaries(conn: &mut ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(parse_primaries(&nodes))
}

/// `CLUSTER NODES` lines are `<id> <ip:port@cport[,hostname]> <flags> …`; a primary's flags
/// hold `master` and not `fail`.
fn parse_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_id, addr, flags) = (f.next()?, f.next()?, f.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("redis://:s3cret@redis:6379/0"), "redis://:***@redis:6379/0");
        assert_eq!(redact_url("rediss://user:s3cret@redis:6380"), "rediss://user:***@redis:6380");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert!(!redact_url("not a url s3cret").contains("s3cret"));
    }

    #[test]
    fn one_node_unless_the_cluster_is_asked_for() {
        assert_eq!(RedisTarget::new("redis://a:6379", false), Ok(RedisTarget::Node("redis://a:6379".into())));
        assert_eq!(
            RedisTarget::new("redis://a:7000, redis://b:7001", true),
            Ok(RedisTarget::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()]))
        );
        assert_eq!(RedisTarget::new("redis://a:7000", true), Ok(RedisTarget::Cluster(vec!["redis://a:7000".into()])));
        let e = RedisTarget::new("redis://a:7000,redis://b:7001", false).unwrap_err();
        assert!(e.contains("REDIS_CLUSTER"), "{e}");
        assert!(RedisTarget::new(" , ", false).is_err());
        let e = RedisTarget::new("redis://:s3cret@a:7000,nonsense://x", true).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let t = RedisTarget::new("redis://:s3cret@a:7000,redis://:s3cret@b:7001", true).unwrap();
        assert_eq!(t.redacted(), "cluster redis://:***@a:7000,redis://:***@b:7001");
    }

    #[test]
    fn a_clusters_live_primaries_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1 2 connected 5461-10922
292f 127.0.0.1:30003@40003,redis-3.local master - 0 1 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 1 1 5 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            parse_primaries(nodes),
            vec![("127.0.0.1".to_string(), 30002), ("127.0.0.1".to_string(), 30003), ("127.0.0.1".to_string(), 30001)]
        );
    }

    #[test]
    fn tls_and_auth_urls_are_understood() {
        // Built with TLS: a rediss:// URL opens (without the feature this is an error).
        assert!(redis::Client::open("rediss://:s3cret@redis.example:6380/0").is_ok());
        assert!(redis::Client::open("rediss://redis.example:6380/#insecure").is_ok());
        let info = redis::Client::open("redis://user:s3cret@redis.example:6379/2").unwrap().get_connection_info().clone();
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert_eq!(info.redis_settings().username(), Some("user"));
    }
}
