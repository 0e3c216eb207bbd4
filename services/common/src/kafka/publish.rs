//! Producing: one output queued without dropping anything when librdkafka's queue is full,
//! its acknowledgement awaited (`send`) or reported to the producer's context (`send_counted`),
//! and a set of outputs sent and every acknowledgement awaited.

use super::message::{OutRecord, TRACEPARENT};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryFuture, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;

/// Queues one output, waiting while librdkafka's local queue is full rather than
/// dropping anything.
#[allow(clippy::result_large_err, reason = "librdkafka hands a record it could not queue back in its error, as rdkafka's send does")]
pub async fn send(producer: &FutureProducer, out: &OutRecord) -> anyhow::Result<DeliveryFuture> {
    let record = FutureRecord::to(&out.topic).key(out.key.as_bytes()).payload(&out.payload).headers(headers(out, None));
    queue(&out.topic, record, |r| producer.send_result(r)).await
}

/// Queues one output as `send` does, with `traceparent` as its trace header, and with
/// `opaque` for the producer's context: its delivery report (acknowledged or refused) goes
/// there, on the producer's polling thread, rather than to a future awaited per output.
#[allow(clippy::result_large_err, reason = "librdkafka hands a record it could not queue back in its error, as rdkafka's send does")]
pub async fn send_counted<C, T>(producer: &ThreadedProducer<C>, out: &OutRecord, traceparent: &str, opaque: Arc<T>) -> anyhow::Result<()>
where
    C: ProducerContext<DeliveryOpaque = Arc<T>>,
    T: Send + Sync,
{
    let record = BaseRecord::with_opaque_to(&out.topic, opaque)
        .key(out.key.as_bytes())
        .payload(&out.payload)
        .headers(headers(out, Some(traceparent)));
    queue(&out.topic, record, |r| producer.send(r)).await
}

/// `out`'s headers for librdkafka, its trace header replaced by `traceparent` if given.
fn headers(out: &OutRecord, traceparent: Option<&str>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(out.headers.len() + 1);
    for (k, v) in out.headers.iter().filter(|(k, _)| traceparent.is_none() || k != TRACEPARENT) {
        headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    if let Some(tp) = traceparent {
        headers = headers.insert(Header { key: TRACEPARENT, value: Some(tp.as_bytes()) });
    }
    headers
}

/// Hands `record` to `try_send` until librdkafka's local queue has room for it.
async fn queue<R, Q>(topic: &str, mut record: R, mut try_send: impl FnMut(R) -> Result<Q, (KafkaError, R)>) -> anyhow::Result<Q> {
    loop {
        match try_send(record) {
            Ok(queued) => return Ok(queued),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(anyhow::anyhow!("cannot queue output to {topic}: {e}")),
        }
    }
}

/// Sends every record, then waits for each acknowledgement: one produce round trip for the
/// lot, not one per record. The first refusal is the error (the rest may have been written:
/// callers rely on idempotency downstream, as for any redelivery).
pub async fn publish_all<'a>(producer: &FutureProducer, records: impl IntoIterator<Item = &'a OutRecord>) -> anyhow::Result<usize> {
    let mut deliveries = vec![];
    for out in records {
        deliveries.push((out.topic.clone(), send(producer, out).await?));
    }
    let n = deliveries.len();
    for (topic, d) in deliveries {
        acknowledged(&topic, d).await?;
    }
    Ok(n)
}

/// Waits for one delivery: Ok once the broker has the record.
pub async fn acknowledged(topic: &str, delivery: DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(anyhow::anyhow!("broker refused output to {topic}: {e}")),
        Err(_) => Err(anyhow::anyhow!("producer dropped an output to {topic} before it was acknowledged")),
    }
}
