//! A group commit for Redis: pipelines of many callers that may run twice, sent together.
//!
//! Every writer lane batch ends with one pipeline: its DONE marks, the cache entries it
//! learned and its tokens' settlings (`finish` in the writer). A writer fed by thousands of
//! tenants has up to `WRITER_WORKING_LANES` batches at work, and when tenants send a record or
//! two each, every batch is one record: sent alone, that pipeline is a round trip per record on
//! top of the claim's and the take's (3.01 per record in `bench tenants`).
//!
//! [`GroupCommit::send`] sends a pipeline at once when nothing is on the wire, so a writer
//! working one lane waits exactly as long as before. While a group is on the wire, every
//! pipeline that arrives waits for it, and all of them then go together in the next one
//! (the sender takes whatever is waiting each time it is free; nothing waits on a timer). So
//! the more lanes finish together, the fewer round trips each costs; a caller waits at most
//! for the group in flight and then its own. The group is bounded by the callers: each waits
//! with its one pipeline until it is answered.
//!
//! Only for pipelines whose replies nobody reads and that are safe to run twice (a DONE mark
//! written again, a cache entry set again, a settling gated by its key), because of failures:
//! - a group Redis refuses in part (one command's error reply; a pipeline is not atomic, so the
//!   rest ran) is sent again one caller at a time, so each caller gets its own answer and one
//!   bad pipeline never fails another's;
//! - a group that could not be sent or answered (connection lost, timeout) is also sent again
//!   part by part, and each caller gets that part's answer: on a Redis that is down, each
//!   fails and retries with its own backoff;
//! - NOSCRIPT (Redis restarted or failed over and lost its scripts) loads every script given
//!   to [`GroupCommit::new`] and sends the group again (`query_with_scripts`).
//!
//! On a Redis Cluster, a script and a pipeline may touch one slot only and every caller's
//! pipeline is one tenant's (one slot): the parts are sent each on its own, at the same time,
//! so a cluster makes as many round trips as it did before this existed, never more.

use crate::redis_conn::{query_with_scripts, RedisConn};
use redis::{Pipeline, RedisResult, Script};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// See the module's documentation. Cheap to clone; clones share one queue.
#[derive(Clone)]
pub struct GroupCommit(Arc<Shared>);

struct Shared {
    conn: RedisConn,
    /// Every script the callers' pipelines call (loaded on NOSCRIPT).
    scripts: Vec<Script>,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Part>,
    /// A sender task is running; it takes `waiting` each time it is free.
    sending: bool,
}

struct Part {
    pipe: Pipeline,
    answer: oneshot::Sender<RedisResult<()>>,
}

impl GroupCommit {
    /// `scripts`: every script the pipelines sent through this may call.
    pub fn new(conn: RedisConn, scripts: Vec<Script>) -> GroupCommit {
        GroupCommit(Arc::new(Shared { conn, scripts, queue: Mutex::new(Queue::default()) }))
    }

    /// Sends `pipe` (alone when nothing is on the wire, else with every pipeline waiting when
    /// the group in flight is answered) and returns once Redis has run it, or with the error
    /// of its own part. A caller that gives up waiting does not take its part back: it may
    /// still run.
    pub async fn send(&self, pipe: Pipeline) -> RedisResult<()> {
        if pipe.is_empty() {
            return Ok(());
        }
        let (answer, answered) = oneshot::channel();
        let start_sender = {
            let mut q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.waiting.push(Part { pipe, answer });
            !std::mem::replace(&mut q.sending, true)
        };
        if start_sender {
            // A task of its own, not the caller's future: a caller dropped while it sends
            // (a lane aborted at shutdown) must not leave the others waiting on nobody.
            tokio::spawn(self.0.clone().send_while_waiting());
        }
        answered.await.unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "the group's sender stopped"))))
    }
}

impl Shared {
    async fn send_while_waiting(self: Arc<Self>) {
        loop {
            let parts = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.waiting.is_empty() {
                    q.sending = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            self.send_group(parts).await;
        }
    }

    async fn send_group(&self, parts: Vec<Part>) {
        let scripts: Vec<&Script> = self.scripts.iter().collect();
        if parts.len() > 1 && !self.conn.is_cluster() {
            let mut all = Pipeline::with_capacity(parts.iter().map(|p| p.pipe.len()).sum());
            for p in &parts {
                for cmd in p.pipe.cmd_iter() {
                    all.add_command(cmd.clone());
                }
            }
            if query_with_scripts::<()>(&self.conn, &all, &scripts).await.is_ok() {
                for p in parts {
                    let _ = p.answer.send(Ok(()));
                }
                return;
            }
        }
        let answers = futures::future::join_all(parts.iter().map(|p| query_with_scripts::<()>(&self.conn, &p.pipe, &scripts))).await;
        for (p, a) in parts.into_iter().zip(answers) {
            let _ = p.answer.send(a);
        }
    }
}
