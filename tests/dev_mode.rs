//! `crm-sync dev --once`, the README's run command, end to end.

use crm_sync_tests::bin;
use std::process::Command;

#[test]
fn dev_mode_accounts_for_every_sample_call() {
    let out = Command::new(bin("crm-sync")).args(["dev", "--once"]).output().expect("run crm-sync dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dev failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // 12 calls, 3 emails, 2 meeting versions: each audited by the normaliser; the 9
    // normalised calls by the deduper once per connected CRM (acme 2, globex 1, initech 2),
    // acme's emails and meetings once (only its HubSpot connection takes them); HubSpot's
    // writes by the writer, once per CRM call (searches and batches vary with timing) and
    // once per write; likewise the other three writers.
    // And acme's 4 leads (lead 1's two versions, lead 2, lead 4) on HubSpot.
    assert!(stdout.contains("(21 of 21 accounted for; "), "{stdout}");
    // Leads: Kim's contact created by her form's lead (v2 superseding v1 in its batch or
    // updating it), updated by LinkedIn's lead (her name kept), the expo badge held for review.
    assert!(stdout.contains("acme      lead dev-lead-1 v2 NORMALISED"), "{stdout}");
    assert!(stdout.contains("created hubspot lead record"), "{stdout}");
    assert!(stdout.contains("updated hubspot lead record"), "{stdout}");
    assert!(stdout.contains("kept (the CRM has a value):"), "{stdout}");
    assert!(stdout.contains("DLQ AMBIGUOUS_MATCH      hubspot    2 people match by phone"), "{stdout}");
    // Emails and meetings, each to its own HubSpot object: the email with two contacts, the
    // reply from a stranger without one, the booked-then-cancelled meeting.
    assert!(stdout.contains("acme      email dev-email-1@mail.acme-sales.example v1"), "{stdout}");
    assert!(stdout.contains("POST /crm/v3/objects/emails/batch/create"), "{stdout}");
    assert!(stdout.contains("POST /crm/v3/objects/meetings/"), "{stdout}");
    assert!(stdout.contains("created hubspot email record"), "{stdout}");
    assert!(stdout.contains("no contact has any participant's address"), "{stdout}");
    assert!(stdout.contains("hubspot meeting record"), "{stdout}");
    // HubSpot: acme-1001, acme-1002 (v2; v1 superseded or updated), acme-1003, initech-1,
    // initech-2; the two emails; the meeting (v1 written or superseded, v2 written).
    assert!(stdout.matches("WRITTEN                  hubspot").count() >= 8, "{stdout}");
    assert!(stdout.contains("POST /crm/v3/objects/calls/batch/create"), "{stdout}");
    // Salesforce: acme's three calls; Zoho: globex's two; Pipedrive: initech's two.
    assert!(stdout.matches("WRITTEN                  salesforce").count() >= 3, "{stdout}");
    assert_eq!(stdout.matches("WRITTEN                  zoho").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("WRITTEN                  pipedrive").count(), 2, "{stdout}");
    for call in [
        "PATCH /services/data/v66.0/composite/sobjects/Task/CrmSyncKey__c",
        "POST /crm/v7/Calls",
        "POST /api/v2/activities",
        "POST /zoho/oauth/v2/token",
    ] {
        assert!(stdout.contains(call), "missing {call:?} in:\n{stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CRM_SIM_URL=http://127.0.0.1:"), "crm-sim was not started: {stderr}");
    // The audit-sink stored it all: the summary ends with a sample trace from PostgreSQL.
    assert!(stdout.contains("Sample trace (crm-sync trace acme-1002 --tenant acme):"), "{stdout}");
    assert!(stdout.contains("Outcome: hubspot: in the CRM as record"), "{stdout}");
    assert!(stderr.contains("dropped this run's audit database"), "{stderr}");
    for service in
        ["crm-sim", "normaliser", "deduper", "audit-sink", "writer-hubspot", "writer-salesforce", "writer-zoho", "writer-pipedrive"]
    {
        assert!(stderr.contains(&format!("{service} stopped (exit status: 0)")), "{service} did not shut down cleanly: {stderr}");
    }
    assert!(
        stderr.contains("removed this run's ") && stderr.contains(" Redis keys (crm-sync-dev-"),
        "dev leaves no Redis keys behind: {stderr}"
    );
    for expected in [
        "acme-1002   v2   NORMALISED",
        "DEDUPED update           hubspot    version 2 supersedes version 1",
        "DUPLICATE                salesforce repeat suppressed",
        "DEDUPED new              pipedrive",
        "DLQ INVALID_PHONE",
        "DLQ TENANT_NOT_CONFIGURED",
        "DLQ SCHEMA_INVALID",
        "(region FR)",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}
