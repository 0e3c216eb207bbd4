//! The Pipedrive writer as a separate process against the dev broker, the machine's Redis and
//! crm-sim: the writer suite (tests/harness/writer_suite.rs) for Pipedrive.

crm_sync_tests::writer_suite!(crm_sync_tests::writer_suite::PIPEDRIVE);
