//! The Zoho CRM writer as a separate process against the dev broker, the machine's Redis and
//! crm-sim: the writer suite (tests/harness/writer_suite.rs) for Zoho CRM.

crm_sync_tests::writer_suite!(crm_sync_tests::writer_suite::ZOHO);
crm_sync_tests::activity_suite!(crm_sync_tests::writer_suite::ZOHO);
crm_sync_tests::timeline_suite!(crm_sync_tests::writer_suite::ZOHO);

#[test]
fn unreadable_users_leave_actors_unmapped_not_writes_failed() {
    crm_sync_tests::timeline_suite::unreadable_users_leave_actors_unmapped_not_writes_failed(
        &crm_sync_tests::writer_suite::ZOHO,
        "users.READ",
    )
}
