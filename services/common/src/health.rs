//! Liveness and readiness over HTTP, for Kubernetes probes and compose healthchecks.
//!
//! Off unless `HEALTH_ADDR` is set (several services share one machine in dev and tests).
//! One per process, so the consume loops report with plain function calls and nothing has
//! to thread a handle through every layer; before `serve` they are no-ops.
//!
//! - `GET /livez`: 200 while the main loop has ticked within `HEALTH_STALL`. A loop stuck
//!   on a call that never returns holds its partitions without progress; a restart hands
//!   them to a replica that works. Waiting on a dependency (Redis down, a token bucket
//!   empty for hours) is not stuck: those waits tick.
//! - `GET /readyz`: 200 once consuming and while not draining or retrying a transient
//!   failure; 503 with the reason otherwise, so a rollout waits and an alert can say why.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

struct Inner {
    service: &'static str,
    stall_ms: i64,
    beat_ms: AtomicI64,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Why the service is not ready although started (a transient failure being retried).
    trouble: Mutex<Option<String>>,
}

static HEALTH: OnceLock<Arc<Inner>> = OnceLock::new();

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Starts the endpoints on `addr` (port 0: any free port), on the current tokio runtime.
/// Returns the bound address. Binding happens here, so a taken port fails at start.
pub fn serve(service: &'static str, addr: SocketAddr, stall: Duration) -> anyhow::Result<SocketAddr> {
    let inner = HEALTH
        .get_or_init(|| {
            Arc::new(Inner {
                service,
                stall_ms: stall.as_millis() as i64,
                beat_ms: AtomicI64::new(now_ms()),
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                trouble: Mutex::new(None),
            })
        })
        .clone();
    let listener = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("HEALTH_ADDR {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new().route("/livez", get(livez)).route("/readyz", get(readyz)).with_state(inner);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoints stopped");
        }
    });
    tracing::info!(%bound, "health endpoints: /livez /readyz");
    Ok(bound)
}

async fn livez(State(h): State<Arc<Inner>>) -> (StatusCode, String) {
    let quiet = now_ms() - h.beat_ms.load(Ordering::Relaxed);
    if quiet > h.stall_ms {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}: main loop stalled for {} ms\n", h.service, quiet))
    } else {
        (StatusCode::OK, format!("{}: live\n", h.service))
    }
}

async fn readyz(State(h): State<Arc<Inner>>) -> (StatusCode, String) {
    if h.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{}: draining\n", h.service));
    }
    if !h.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{}: starting\n", h.service));
    }
    if let Some(t) = h.trouble.lock().expect("health").as_ref() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{}: {t}\n", h.service));
    }
    (StatusCode::OK, format!("{}: ready\n", h.service))
}

/// The main loop is alive (call at least every few seconds, including while waiting).
pub fn beat() {
    if let Some(h) = HEALTH.get() {
        h.beat_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Started: subscribed and able to produce.
pub fn ready() {
    if let Some(h) = HEALTH.get() {
        h.ready.store(true, Ordering::Relaxed);
    }
}

/// Shutting down: readiness fails so no new work is routed here.
pub fn draining() {
    if let Some(h) = HEALTH.get() {
        h.draining.store(true, Ordering::Relaxed);
    }
}

/// A transient failure being retried (`Some`), or over (`None`).
pub fn trouble(reason: Option<String>) {
    if let Some(h) = HEALTH.get() {
        *h.trouble.lock().expect("health") = reason;
    }
}
