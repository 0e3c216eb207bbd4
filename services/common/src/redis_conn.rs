//! The one way every service connects to Redis: a lazy multiplexed `ConnectionManager` with
//! timeouts, so a service starts while Redis is down and a request fails within seconds
//! rather than hanging on a dead socket (callers retry with their own backoff). Also the
//! password-free form of a URL for logs, and prefix cleanup for dev runs and benchmarks.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Connects on first use; requests time out (connect 2 s, response 5 s).
pub fn connect_lazy(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Connects now and fails if Redis does not answer a PING.
pub async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let mut conn = connect_lazy(url)?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
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
/// SCAN, not KEYS, so a large Redis is not blocked.
pub async fn delete_prefix(conn: &ConnectionManager, prefix: &str) -> redis::RedisResult<u64> {
    let mut conn = conn.clone();
    let mut cursor: u64 = 0;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(format!("{prefix}:*")).arg("COUNT").arg(1000).query_async(&mut conn).await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
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
    fn tls_and_auth_urls_are_understood() {
        // Built with TLS: a rediss:// URL opens (without the feature this is an error).
        assert!(redis::Client::open("rediss://:s3cret@redis.example:6380/0").is_ok());
        assert!(redis::Client::open("rediss://redis.example:6380/#insecure").is_ok());
        let info = redis::Client::open("redis://user:s3cret@redis.example:6379/2").unwrap().get_connection_info().clone();
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert_eq!(info.redis_settings().username(), Some("user"));
    }
}
