//! What every crm-sync service shares. One place for each concern: Avro framing
//! (`codec`), the record types (`events`), configuration (`config`, `tenants`, `live_tenants`), Kafka clients,
//! messages and publishing (`kafka`), the consume → process → produce → commit loop
//! (`pipeline`), stopping (`shutdown`), audit and DLQ emission
//! (`emit`), phone numbers (`phone`), telemetry (`telemetry`) and health endpoints (`health`).

pub mod audit_store;
pub mod clock;
pub mod codec;
pub mod config;
pub mod dedup;
pub mod email;
pub mod emit;
pub mod events;
pub mod fingerprint;
pub mod health;
pub mod kafka;
pub mod key_names;
pub mod live_tenants;
pub mod lookups;
pub mod overrides;
pub mod phone;
pub mod pipeline;
pub mod redis_conn;
pub mod redis_group;
pub mod redis_keys;
pub mod schemas;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;

/// Every crm-sync binary allocates through mimalloc. A stage's work is mostly small
/// short-lived allocations made on one thread and freed on another (a message decoded on a
/// rayon worker, its outputs sent from the loop's task, its delivery report freed on
/// librdkafka's thread). glibc's malloc spent 40% of the normaliser's CPU on that (its
/// arenas consolidating and unlinking chunks, `bench normaliser` under perf), and kept
/// freed memory in per-thread arenas, which is most of a stage's RSS. Built without
/// transparent huge pages (`no_thp`): mimalloc commits its arenas eagerly on Linux and
/// advised them as huge pages, so every 2 MiB touched counted whole in RSS (a writer with
/// 10,000 tenants held 780 MiB where glibc's malloc needed 237 MiB; 224 MiB without them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
