//! Messages as every stage sees them: an input read from a topic (owned, headers decoded,
//! its trace id found), an output to produce, and the headers crm-sync gives meaning to.

use rdkafka::message::{BorrowedMessage, Headers, Message};

pub const TRACEPARENT: &str = "traceparent";
/// Set by `crm-sync dlq replay`; stages copy it into DeadLetter.replay_count so replay
/// loops can be stopped.
pub const REPLAY_COUNT: &str = "crm-sync-replay-count";
/// Set by the reconciler (and `dlq replay` of its entries) on a write request whose record
/// is gone from the CRM: the value is the gone record's id, and the writer creates again
/// only while its claim still names that record.
pub const RECREATE: &str = "crm-sync-recreate";
/// Set by `crm-sync backfill` on the calls it re-reads (the value is the run's id). The
/// normaliser carries it forward and the deduper lets such a call through even when its
/// mark says it was seen: the writer's claim is what keeps a backfill from writing twice.
pub const BACKFILL: &str = "crm-sync-backfill";

/// An input message, owned, so handlers can hold it across awaits.
#[derive(Debug, Clone)]
pub struct InMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// From the `traceparent` header, or new when the producer sent none.
    pub trace_id: String,
}

impl InMessage {
    pub fn from_kafka(m: &BorrowedMessage<'_>) -> InMessage {
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
            .unwrap_or_default();
        let trace_id = headers.iter().find(|(k, _)| k == TRACEPARENT).and_then(|(_, v)| parse_traceparent(v)).unwrap_or_else(new_trace_id);
        InMessage {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            headers,
            trace_id,
        }
    }

    /// Where this input was read: `<topic>/<partition>/<offset>` (a dedup mark names the
    /// input that made it so).
    pub fn place(&self) -> String {
        let (mut p, mut o) = (itoa::Buffer::new(), itoa::Buffer::new());
        [self.topic.as_str(), "/", p.format(self.partition), "/", o.format(self.offset)].concat()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    pub fn key_str(&self) -> Option<String> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_string)
    }

    pub fn replay_count(&self) -> i32 {
        self.header(REPLAY_COUNT).and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
    }
}

/// A W3C traceparent's trace id, if the header is well formed.
pub fn parse_traceparent(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split('-');
    let (_ver, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32)).then(|| trace.to_ascii_lowercase())
}

pub fn new_trace_id() -> String {
    const_hex::Buffer::<16>::new().format(&(rand::random::<u128>() | 1).to_be_bytes()).to_string()
}

/// A W3C traceparent naming span `span_id` of trace `trace_id` (sampled). Built for every
/// message a stage writes, so without the formatting machinery.
pub fn traceparent(trace_id: &str, span_id: [u8; 8]) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    s.push_str(trace_id);
    s.push('-');
    s.push_str(const_hex::Buffer::<8>::new().format(&span_id));
    s.push_str("-01");
    s
}

/// A span id of our own, for a record written outside any exported span.
pub fn new_span_id() -> [u8; 8] {
    (rand::random::<u64>() | 1).to_be_bytes()
}

/// A message to produce. Keyed by tenant so one tenant's events stay in order.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl OutRecord {
    pub fn new(topic: &str, key: &str, payload: Vec<u8>, trace_id: &str) -> OutRecord {
        let traceparent = traceparent(trace_id, new_span_id());
        OutRecord { topic: topic.to_string(), key: key.to_string(), payload, headers: vec![(TRACEPARENT.to_string(), traceparent)] }
    }

    /// Names the span this record was made under as the next stage's parent.
    pub fn set_traceparent(&mut self, value: String) {
        match self.headers.iter_mut().find(|(k, _)| k == TRACEPARENT) {
            Some(h) => h.1 = value,
            None => self.headers.push((TRACEPARENT.to_string(), value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inputs_place_names_topic_partition_and_offset() {
        let m = InMessage {
            topic: "calls.normalised".into(),
            partition: 11,
            offset: -1,
            key: None,
            payload: None,
            timestamp_ms: None,
            headers: vec![],
            trace_id: String::new(),
        };
        assert_eq!(m.place(), "calls.normalised/11/-1");
        assert_eq!(InMessage { partition: 0, offset: i64::MAX, ..m }.place(), format!("calls.normalised/0/{}", i64::MAX));
    }

    #[test]
    fn traceparent_parsing() {
        let t = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(parse_traceparent(t).unwrap(), "0af7651916cd43dd8448eb211c80319c");
        assert!(parse_traceparent(b"00-xyz-1-01").is_none());
        assert!(parse_traceparent(b"00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none());
        assert!(parse_traceparent(&[0xff, 0xfe]).is_none());
        assert_eq!(new_trace_id().len(), 32);
        let id = new_trace_id();
        assert!(
            id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) && u128::from_str_radix(&id, 16).unwrap() & 1 == 1,
            "{id}"
        );
        let tp = traceparent("0af7651916cd43dd8448eb211c80319c", [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert_eq!(tp, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(parse_traceparent(tp.as_bytes()).unwrap(), "0af7651916cd43dd8448eb211c80319c");
    }
}
