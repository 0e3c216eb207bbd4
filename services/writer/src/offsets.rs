//! Which offsets a writer may commit (DESIGN §5): messages finish out of order (tenants in
//! separate lanes), so each partition is committed only up to its lowest unfinished offset.
//! An assignment has a generation: after a rebalance, work finishing for a partition we no
//! longer own (or own again, from a re-read) must not move the new assignment's position.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    unfinished: BTreeSet<i64>,
    /// One past the highest offset read.
    next: Option<i64>,
    committed: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Offsets {
    parts: HashMap<(String, i32), Partition>,
    generations: u64,
}

/// A read message's place, to report it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

impl Offsets {
    /// A partition was assigned: start a new generation.
    pub fn assigned(&mut self, topic: &str, partition: i32) {
        self.generations += 1;
        self.parts.insert((topic.to_string(), partition), Partition { generation: self.generations, ..Default::default() });
    }

    pub fn revoked(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_string(), partition));
    }

    /// A message was read and handed to a lane.
    pub fn read(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        if !self.parts.contains_key(&(topic.to_string(), partition)) {
            self.assigned(topic, partition);
        }
        let p = self.parts.get_mut(&(topic.to_string(), partition)).expect("just ensured");
        p.unfinished.insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Ticket { topic: topic.to_string(), partition, offset, generation: p.generation }
    }

    /// Everything the message produced is acknowledged.
    pub fn finished(&mut self, t: &Ticket) {
        if let Some(p) = self.parts.get_mut(&(t.topic.clone(), t.partition)) {
            if p.generation == t.generation {
                p.unfinished.remove(&t.offset);
            }
        }
    }

    /// (topic, partition, offset to commit) for partitions whose position moved.
    pub fn positions_to_commit(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = vec![];
        for ((topic, partition), p) in &mut self.parts {
            let Some(next) = p.next else { continue };
            let pos = p.unfinished.first().copied().unwrap_or(next);
            if p.committed != Some(pos) {
                out.push((topic.clone(), *partition, pos));
            }
        }
        out
    }

    pub fn committed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&(topic.to_string(), partition)) {
            p.committed = Some(offset);
        }
    }

    pub fn unfinished(&self) -> usize {
        self.parts.values().map(|p| p.unfinished.len()).sum()
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
}
