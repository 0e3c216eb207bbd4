//! Reading whole topics without a consumer group: for `crm-sync dev`'s report, the bench
//! and integration tests, which must see everything a stage wrote without joining (or
//! disturbing) the stages' groups.

use crate::pipeline::InMessage;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

pub struct TopicReader {
    consumer: BaseConsumer,
}

impl TopicReader {
    /// Assigns every partition of `topics` from the beginning.
    pub fn new(bootstrap: &str, topics: &[&str]) -> anyhow::Result<TopicReader> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "crm-sync-topic-reader")
            .set("enable.auto.commit", "false")
            // Tests watch progress through a reader: see new messages within tens of ms.
            .set("fetch.wait.max.ms", "20")
            // Never jump to the end silently if the beginning is gone.
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10))?;
            let topic = md
                .topics()
                .first()
                .ok_or_else(|| anyhow::anyhow!("topic {t} not in metadata"))?;
            for p in topic.partitions() {
                tpl.add_partition_offset(t, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(TopicReader { consumer })
    }

    /// Reads until `done(messages so far)` is true or `timeout` passes; returns what it read.
    pub fn read_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[InMessage]) -> bool,
    ) -> Vec<InMessage> {
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
