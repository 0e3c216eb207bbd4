//! The Kafka layer every binary shares: building clients (`client`, the only place a
//! librdkafka configuration is made), messages in and out (`message`), producing and
//! awaiting acknowledgements (`publish`), which offsets may be committed and committing them
//! (`offsets`), and reading topics without a group (`reader`).
//! `pipeline::run` and the writer's per-tenant lanes are two schedulers over these parts.

pub mod client;
pub mod message;
pub mod offsets;
pub mod publish;
pub mod reader;

pub use client::{Kafka, CONSUMER_FETCH_WAIT_MS};
pub use message::{new_trace_id, parse_traceparent, InMessage, OutRecord, BACKFILL, RECREATE, REPLAY_COUNT, TRACEPARENT};
pub use offsets::{SharedOffsets, Ticket};
pub use publish::{acknowledged, publish_all, send, send_counted};
