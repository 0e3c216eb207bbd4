//! The Salesforce writer as a separate process against the dev broker, the machine's Redis and
//! crm-sim: the writer suite (tests/harness/writer_suite.rs) for Salesforce, and the activity suite for
//! its meetings (Events).

crm_sync_tests::writer_suite!(crm_sync_tests::writer_suite::SALESFORCE);
crm_sync_tests::activity_suite!(crm_sync_tests::writer_suite::SALESFORCE);
crm_sync_tests::timeline_suite!(crm_sync_tests::writer_suite::SALESFORCE);
crm_sync_tests::lead_suite!(crm_sync_tests::lead_suite::SALESFORCE_LEADS);
