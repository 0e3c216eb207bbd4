//! The writer service: `crm.writes.<crm>` → a CRM, through the connector library
//! (`crm-connectors`). `runtime` is the Kafka side (per-tenant lanes, pausing, commits through
//! the shared offset tracker, `crm_common::kafka::offsets`), `process` one lane's batch: claims, contacts, the
//! connector's plan and write, audit and DLQ records; `owners` whose record it is.

pub mod backlog;
mod leads;
pub mod owners;
pub mod process;
pub mod runtime;
