//! The Salesforce connector (CRM-APIS §2): calls as Tasks carrying the idempotency key in an
//! external-ID field, written with sObject Collections upserts. So far: its rate-limit policy
//! (`limits`) and error classification (`errors`); the client follows.

pub mod errors;
pub mod limits;
