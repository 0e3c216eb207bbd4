//! How a service stops: on SIGTERM or SIGINT, draining what it holds, within a bounded
//! grace period.

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// A service's stop: cancelled on SIGTERM or SIGINT, and bounded. A service drains what it
/// holds, commits and leaves its group; but with the broker, Redis or PostgreSQL gone every
/// one of those steps can wait for minutes (deliveries time out after 5, a sync commit or
/// a group leave waits for a coordinator that is not there). So once the grace period
/// (`SHUTDOWN_GRACE`, default 30 s, as Kubernetes gives) is spent less a margin, the
/// process exits anyway, leaving uncommitted whatever it could not commit: its inputs are
/// redelivered to the next owner, whose claims and marks make redoing them safe.
pub fn service() -> CancellationToken {
    let grace = std::env::var("SHUTDOWN_GRACE").ok().and_then(|g| humantime::parse_duration(&g).ok()).unwrap_or(Duration::from_secs(30));
    // Leave the orchestrator time to see the exit before it would SIGKILL.
    let deadline = grace.saturating_sub(Duration::from_secs(2).min(grace / 10));
    let token = on_signals();
    let t = token.clone();
    tokio::spawn(async move {
        t.cancelled().await;
        // A thread, not a task: the runtime may be blocked in a synchronous client call.
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            tracing::warn!(grace = ?grace, "grace period spent before the drain finished (broker, Redis or database unreachable?): exiting now; uncommitted inputs will be redelivered");
            std::process::exit(0);
        });
    });
    token
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
            _ = int.recv() => info!("SIGINT: finishing in-flight work"),
        }
        crate::health::draining();
        t.cancel();
    });
    token
}
