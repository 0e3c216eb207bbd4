//! Which offsets a stage may commit, for both schedulers (`pipeline::run` and the writer's
//! lanes): an input is finished only when everything it produced (results, audit, DLQ) is
//! acknowledged, messages may finish out of order (the writer's tenants run in separate
//! lanes), so each partition is committed only up to its lowest unfinished offset (DESIGN §1,
//! §5). An assignment has a generation: after a rebalance, work finishing for a partition we
//! no longer own (or own again, from a re-read) must not move the new assignment's position.
//!
//! Commits are ours, never librdkafka's auto-commit (`MANUAL_COMMITS`): [`commit`] on a
//! tick and at the end, and on a revocation for the partitions leaving ([`TrackingContext`]),
//! so their next owner starts where this one's finished work ends.

use crate::telemetry::StageMetrics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tracing::{debug, info, warn};

/// Consumer settings for offsets tracked here: nothing is stored or committed by librdkafka.
pub const MANUAL_COMMITS: [(&str, &str); 2] = [("enable.auto.commit", "false"), ("enable.auto.offset.store", "false")];

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    unfinished: BTreeSet<i64>,
    /// Positions kept uncommitted for messages not yet handed to anyone (the writer's
    /// backlog: a tenant's messages left in Kafka to be read again), with how many holders.
    holds: BTreeMap<i64, u32>,
    /// One past the highest offset read.
    next: Option<i64>,
    committed: Option<i64>,
}

/// Partitions by topic, then number: every message read looks its partition up, so the
/// lookup takes a `&str` and allocates nothing, and tickets share their topic's name.
#[derive(Debug, Default)]
pub struct Offsets {
    parts: HashMap<Arc<str>, HashMap<i32, Partition>>,
    generations: u64,
}

/// A read message's place, to report it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

/// A position kept uncommitted (see [`Offsets::hold`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Hold {
    partition: i32,
    topic: String,
    offset: i64,
    generation: u64,
}

impl Hold {
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

impl Offsets {
    /// The partition's current assignment generation (a new one if it was not known).
    pub fn generation(&mut self, topic: &str, partition: i32) -> u64 {
        self.part(topic, partition).generation
    }

    /// The partition's generation, if it is assigned.
    pub fn current_generation(&self, topic: &str, partition: i32) -> Option<u64> {
        self.parts.get(topic).and_then(|ps| ps.get(&partition)).map(|p| p.generation)
    }

    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        self.parts.get_mut(topic).and_then(|ps| ps.get_mut(&partition))
    }

    fn part(&mut self, topic: &str, partition: i32) -> &mut Partition {
        if self.get_mut(topic, partition).is_none() {
            self.assigned(topic, partition);
        }
        self.get_mut(topic, partition).expect("just ensured")
    }

    /// The topic's shared name (a ticket's).
    fn topic_name(&self, topic: &str) -> Arc<str> {
        self.parts.get_key_value(topic).map_or_else(|| Arc::from(topic), |(name, _)| name.clone())
    }

    /// A message at `offset` was read and left in Kafka, to be read again: nothing from
    /// `offset` on is committed until the hold is moved past it or released. Unlike a
    /// ticket, a hold is a position, shared by whatever messages finish there.
    pub fn hold(&mut self, topic: &str, partition: i32, offset: i64) -> Hold {
        let p = self.part(topic, partition);
        *p.holds.entry(offset).or_default() += 1;
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Hold { topic: topic.to_string(), partition, offset, generation: p.generation }
    }

    /// Moves `hold` to `offset` (a later one: what before it was handed on is tracked by
    /// its tickets).
    pub fn move_hold(&mut self, hold: &mut Hold, offset: i64) {
        let generation = hold.generation;
        if let Some(p) = self.get_mut(&hold.topic, hold.partition) {
            if p.generation == generation {
                *p.holds.entry(offset).or_default() += 1;
                release_in(p, hold.offset);
            }
        }
        hold.offset = offset;
    }

    pub fn release(&mut self, hold: Hold) {
        if let Some(p) = self.get_mut(&hold.topic, hold.partition) {
            if p.generation == hold.generation {
                release_in(p, hold.offset);
            }
        }
    }

    /// A message at `offset` was read and left in Kafka under an existing hold.
    pub fn passed(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self.part(topic, partition);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A partition was assigned: start a new generation.
    pub fn assigned(&mut self, topic: &str, partition: i32) {
        self.generations += 1;
        let name = self.topic_name(topic);
        self.parts.entry(name).or_default().insert(partition, Partition { generation: self.generations, ..Default::default() });
    }

    pub fn revoked(&mut self, topic: &str, partition: i32) {
        if let Some(ps) = self.parts.get_mut(topic) {
            ps.remove(&partition);
            if ps.is_empty() {
                self.parts.remove(topic);
            }
        }
    }

    /// A message was read and handed to a lane.
    pub fn read(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let p = self.part(topic, partition);
        p.unfinished.insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        let generation = p.generation;
        Ticket { topic: self.topic_name(topic), partition, offset, generation }
    }

    /// Everything the message produced is acknowledged.
    pub fn finished(&mut self, t: &Ticket) {
        if let Some(p) = self.get_mut(&t.topic, t.partition) {
            if p.generation == t.generation {
                p.unfinished.remove(&t.offset);
            }
        }
    }

    /// (topic, partition, offset to commit) for partitions whose position moved.
    pub fn positions_to_commit(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = vec![];
        for ((topic, partition), p) in self.parts.iter().flat_map(|(t, ps)| ps.iter().map(move |(n, p)| ((t, n), p))) {
            let Some(next) = p.next else { continue };
            let held = p.holds.keys().next().copied().unwrap_or(next);
            let pos = p.unfinished.first().copied().unwrap_or(next).min(held);
            if p.committed != Some(pos) {
                out.push((topic.to_string(), *partition, pos));
            }
        }
        out
    }

    pub fn committed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            p.committed = Some(offset);
        }
    }

    pub fn unfinished(&self) -> usize {
        self.parts.values().flat_map(HashMap::values).map(|p| p.unfinished.len()).sum()
    }

    /// Partitions whose commits stop at a hold.
    pub fn held(&self) -> usize {
        self.parts.values().flat_map(HashMap::values).filter(|p| !p.holds.is_empty()).count()
    }

    /// The positions to commit for these partitions only (those being revoked).
    fn positions_of(&mut self, leaving: &[(String, i32)]) -> Vec<(String, i32, i64)> {
        self.positions_to_commit().into_iter().filter(|(t, p, _)| leaving.iter().any(|(lt, lp)| lt == t && lp == p)).collect()
    }
}

fn release_in(p: &mut Partition, offset: i64) {
    if let Some(n) = p.holds.get_mut(&offset) {
        *n -= 1;
        if *n == 0 {
            p.holds.remove(&offset);
        }
    }
}

/// The offsets of one consumer, shared by its read loop, whatever acknowledges its outputs,
/// and its rebalance callbacks.
pub type SharedOffsets = Arc<Mutex<Offsets>>;

/// Commits `moves` synchronously and records them; a failure is logged and the same
/// positions are tried again at the next commit.
fn commit_moves<C: Consumer<X>, X: ConsumerContext>(consumer: &C, offsets: &Mutex<Offsets>, moves: Vec<(String, i32, i64)>) {
    if moves.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in &moves {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            let mut o = offsets.lock().expect("offsets");
            for (topic, partition, offset) in moves {
                o.committed(&topic, partition, offset);
            }
        }
        Err(e) => warn!("commit failed (retried at the next commit): {e}"),
    }
}

/// Commits every partition whose position moved: up to its lowest unfinished offset.
pub fn commit<C: Consumer<X>, X: ConsumerContext>(consumer: &C, offsets: &Mutex<Offsets>) {
    let moves = offsets.lock().expect("offsets").positions_to_commit();
    commit_moves(consumer, offsets, moves);
}

/// A consumer context that keeps [`Offsets`] in step with the group's assignment (a new
/// generation per assignment; on a revocation, finished work committed and the partition
/// dropped), and records consumer lag from librdkafka's statistics.
pub struct TrackingContext {
    pub offsets: SharedOffsets,
    pub metrics: StageMetrics,
}

impl ClientContext for TrackingContext {
    /// Consumer lag per partition: what autoscaling and the lag alerts read.
    fn stats(&self, stats: rdkafka::Statistics) {
        self.metrics.record_lag(stats);
    }
}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let leaving: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            let moves = self.offsets.lock().expect("offsets").positions_of(&leaving);
            debug!(partitions = leaving.len(), commits = moves.len(), "committing finished work of revoked partitions");
            commit_moves(c, &self.offsets, moves);
            let mut o = self.offsets.lock().expect("offsets");
            for (topic, partition) in &leaving {
                o.revoked(topic, *partition);
            }
            info!(partitions = tpl.count(), "partitions revoked; work still in flight for them stays uncommitted");
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut o = self.offsets.lock().expect("offsets");
            for e in tpl.elements() {
                o.assigned(e.topic(), e.partition());
            }
            info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_lowest_unfinished_offset() {
        let mut o = Offsets::default();
        let a = o.read("w", 0, 10);
        let b = o.read("w", 0, 11);
        let c = o.read("w", 0, 12);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 10)]);
        o.finished(&b);
        o.finished(&c);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 10)], "11 and 12 are done but 10 is not");
        o.committed("w", 0, 10);
        assert!(o.positions_to_commit().is_empty());
        o.finished(&a);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 13)]);
    }

    #[test]
    fn work_from_before_a_rebalance_does_not_move_the_new_position() {
        let mut o = Offsets::default();
        let old = o.read("w", 1, 5);
        o.revoked("w", 1);
        o.assigned("w", 1);
        let again = o.read("w", 1, 5);
        o.finished(&old);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 1, 5)], "the re-read 5 is still unfinished");
        o.finished(&again);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 1, 6)]);
        assert_eq!(o.unfinished(), 0);
    }

    #[test]
    fn a_hold_keeps_its_position_uncommitted_until_moved_past_or_released() {
        let mut o = Offsets::default();
        let a = o.read("w", 0, 0);
        let mut left = o.hold("w", 0, 1);
        o.passed("w", 0, 2);
        let c = o.read("w", 0, 3);
        o.finished(&a);
        o.finished(&c);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 1)], "1 and 2 were left in Kafka");
        // 1 is read again and handed on; the hold moves to 2, where another message may
        // also finish without releasing it.
        let again = o.read("w", 0, 1);
        o.move_hold(&mut left, 2);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 1)], "1 is not finished yet");
        o.finished(&again);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 2)]);
        let two = o.read("w", 0, 2);
        o.finished(&two);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 2)], "the hold at 2 outlives the ticket at 2");
        assert_eq!(o.held(), 1);
        o.release(left);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 4)]);
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn a_hold_from_before_a_rebalance_does_nothing() {
        let mut o = Offsets::default();
        let mut old = o.hold("w", 0, 5);
        o.revoked("w", 0);
        o.assigned("w", 0);
        let t = o.read("w", 0, 5);
        o.move_hold(&mut old, 6);
        o.finished(&t);
        assert_eq!(o.positions_to_commit(), vec![("w".into(), 0, 6)]);
        o.release(old);
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn a_revocation_commits_only_the_leaving_partitions() {
        let mut o = Offsets::default();
        let a = o.read("w", 0, 3);
        o.read("w", 1, 7);
        o.finished(&a);
        assert_eq!(o.positions_of(&[("w".into(), 0)]), vec![("w".into(), 0, 4)]);
        assert!(o.positions_of(&[("x".into(), 0)]).is_empty());
    }
}
