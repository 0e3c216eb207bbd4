//! What every crm-sync service shares. One place for each concern: Avro framing
//! (`codec`), the record types (`events`), configuration (`config`, `tenants`), Kafka clients,
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
pub mod overrides;
pub mod phone;
pub mod pipeline;
pub mod redis_conn;
pub mod redis_keys;
pub mod schemas;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;
