//! Reading topics without a consumer group: the reconciler's way back from an audit row to
//! its write request, `crm-sync backfill`'s range by time, `crm-sync dev`'s report, the
//! bench and the tests, which must see what a stage wrote without joining (or disturbing)
//! the stages' groups.

use super::{InMessage, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub struct TopicReader {
    consumer: BaseConsumer,
}

impl TopicReader {
    /// Assigns every partition of `topics` from the beginning.
    pub fn new(kafka: &Kafka, topics: &[&str]) -> anyhow::Result<TopicReader> {
        let consumer = kafka.reader("crm-sync-topic-reader")?;
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10))?;
            let topic = md.topics().first().ok_or_else(|| anyhow::anyhow!("topic {t} not in metadata"))?;
            for p in topic.partitions() {
                tpl.add_partition_offset(t, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(TopicReader { consumer })
    }

    /// Reads until `done(messages so far)` is true or `timeout` passes; returns what it read.
    pub fn read_until(&self, timeout: Duration, mut done: impl FnMut(&[InMessage]) -> bool) -> Vec<InMessage> {
        let deadline = Instant::now() + timeout;
        let mut out = vec![];
        while !done(&out) && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => out.push(InMessage::from_kafka(&m)),
                Some(Err(e)) => tracing::warn!("topic reader: {e}"),
                None => {}
            }
        }
        out
    }

    /// Sum of high watermarks of `topic` (messages ever written, on a broker that never
    /// deletes).
    pub fn high_watermarks(&self, topic: &str) -> anyhow::Result<i64> {
        let md = self.consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut total = 0;
        for p in md.topics().first().map(|t| t.partitions()).unwrap_or_default() {
            let (lo, hi) = self.consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += hi - lo.max(0);
        }
        Ok(total)
    }
}

/// Reads the messages at `wanted` (partition, offset) of `topic`, without a consumer group:
/// the reconciler's way back from an audit row to the write request it recorded. Reads
/// forward from each partition's first wanted offset and seeks over long gaps. Offsets the
/// topic no longer keeps (retention) are absent from the answer.
pub fn fetch_at(kafka: &Kafka, topic: &str, wanted: &[(i32, i64)], timeout: Duration) -> anyhow::Result<HashMap<(i32, i64), InMessage>> {
    const GAP: i64 = 2_000;
    let consumer = kafka.reader("crm-sync-fetch-at")?;
    let mut by_part: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for &(p, o) in wanted {
        by_part.entry(p).or_default().insert(o);
    }
    let mut out = HashMap::new();
    for (p, offsets) in by_part {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let want: Vec<i64> = offsets.into_iter().filter(|o| *o >= low && *o < high).collect();
        let mut i = 0;
        while i < want.len() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(want[i]))?;
            consumer.assign(&tpl)?;
            let deadline = Instant::now() + timeout;
            loop {
                anyhow::ensure!(Instant::now() < deadline, "{topic}/{p}: offset {} not read within {timeout:?}", want[i]);
                let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
                let m = m?;
                let at = rdkafka::Message::offset(&m);
                if want[i..].binary_search(&at).is_ok() {
                    out.insert((p, at), InMessage::from_kafka(&m));
                }
                while i < want.len() && want[i] <= at {
                    i += 1;
                }
                if i >= want.len() || want[i] > at + GAP {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Per partition of `topic`: the first offset whose timestamp is at or after `from_ms`,
/// and the first at or after `to_ms` (the end of the range, exclusive). Kafka's offsets by
/// timestamp: `crm-sync backfill`'s range.
pub fn offsets_by_time(kafka: &Kafka, topic: &str, from_ms: i64, to_ms: i64) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let consumer = kafka.reader("crm-sync-offsets-by-time")?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> =
        md.topics().first().ok_or_else(|| anyhow::anyhow!("topic {topic} not in metadata"))?.partitions().iter().map(|p| p.id()).collect();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} does not exist");
    // `start`: where a partition's scan begins when the broker finds no message at or after
    // the time (the end, for `to`; for `from`, the beginning: a broker that cannot look up
    // times, like librdkafka's mock, answers "none", and the scan filters by timestamp anyway).
    let at = |ms: i64, from_start: bool| -> anyhow::Result<HashMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for &p in &parts {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
        }
        let found = consumer.offsets_for_times(tpl, Duration::from_secs(10))?;
        let mut out = HashMap::new();
        for e in found.elements() {
            let (low, high) = consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
            let o = match e.offset() {
                Offset::Offset(o) if o < high => o,
                _ if from_start => low,
                _ => high,
            };
            out.insert(e.partition(), o);
        }
        Ok(out)
    };
    let (from, to) = (at(from_ms, true)?, at(to_ms, false)?);
    Ok(parts.iter().map(|p| (*p, from[p], to[p].max(from[p]))).collect())
}
