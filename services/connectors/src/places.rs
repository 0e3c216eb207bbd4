//! Places for lane batches to work in: the writer's memory bounded by the work it does, not
//! by how many tenants are sending.
//!
//! A writer fed by thousands of tenants at once has a lane batch per tenant in flight, and
//! each holds its decoded requests, its matched contacts, its request bodies and the state of
//! every call it is inside of. Most of them are only waiting: for a place on the wire
//! (`Api::in_flight`), for tokens, for a retry's backoff, for another writer's lease. With
//! 10,000 tenants sending at once that was 464 MiB (`bench tenants`). So at most `n` batches
//! work at once ([`Places::work`], `WRITER_WORKING_LANES`), and a batch's state is allocated
//! only once it has a place.
//!
//! A batch gives its place up for as long as it waits for something that may take long
//! ([`aside`]: an empty bucket, a backoff, a lease held elsewhere) and takes one again after:
//! a tenant whose bucket is empty never keeps another tenant from working, the same rule the
//! wire's places follow. What waits aside still holds its memory, but only tenants that are
//! waiting on their own limits do that.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct Places(Arc<Semaphore>);

struct Held {
    places: Arc<Semaphore>,
    permit: RefCell<Option<OwnedSemaphorePermit>>,
}

tokio::task_local! {
    static HELD: Held;
}

impl Places {
    pub fn new(n: usize) -> Places {
        Places(Arc::new(Semaphore::new(n.max(1))))
    }

    /// Runs the future `make` builds once a place is free, boxed so that its state exists
    /// only from then on.
    pub async fn work<F: Future>(&self, make: impl FnOnce() -> F) -> F::Output {
        let permit = self.0.clone().acquire_owned().await.expect("places are never closed");
        let held = Held { places: self.0.clone(), permit: RefCell::new(Some(permit)) };
        HELD.scope(held, Box::pin(make())).await
    }

    /// Places free now.
    pub fn free(&self) -> usize {
        self.0.available_permits()
    }
}

/// Waits for `f` without holding a place (outside [`Places::work`], just waits for it).
pub async fn aside<F: Future>(f: F) -> F::Output {
    let places = HELD
        .try_with(|h| {
            h.permit.borrow_mut().take();
            h.places.clone()
        })
        .ok();
    let out = f.await;
    if let Some(places) = places {
        let permit = places.acquire_owned().await.expect("places are never closed");
        let _ = HELD.try_with(|h| *h.permit.borrow_mut() = Some(permit));
    }
    out
}

/// Sleeps for `d` without holding a place.
pub async fn sleep(d: std::time::Duration) {
    aside(tokio::time::sleep(d)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_batch_waiting_aside_lets_another_work() {
        let places = Places::new(1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let p = places.clone();
        let waiting = tokio::spawn(async move {
            p.work(|| async move {
                // An empty bucket: waits without its place until told.
                aside(rx).await.unwrap();
                "waited"
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let other = tokio::time::timeout(Duration::from_secs(1), places.work(|| async { "worked" })).await;
        assert_eq!(other.expect("the waiting batch gave its place up"), "worked");
        tx.send(()).unwrap();
        assert_eq!(waiting.await.unwrap(), "waited");
        assert_eq!(places.free(), 1, "every place came back");
    }

    #[tokio::test]
    async fn work_waits_for_a_place() {
        let places = Places::new(1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let p = places.clone();
        let busy = tokio::spawn(async move { p.work(|| async move { rx.await.unwrap() }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(tokio::time::timeout(Duration::from_millis(100), places.work(|| async {})).await.is_err(), "no place while one works");
        tx.send(()).unwrap();
        busy.await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(1), places.work(|| async {})).await.is_ok());
    }

    #[tokio::test]
    async fn aside_outside_a_place_just_waits() {
        assert_eq!(aside(async { 7 }).await, 7);
    }
}
