//! `crm-sync dev --once`, the README's run command, end to end.

use crm_sync_tests::bin;
use std::process::Command;

#[test]
fn dev_mode_accounts_for_every_sample_call() {
    let out = Command::new(bin("crm-sync")).args(["dev", "--once"]).output().expect("run crm-sync dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dev failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("(10 of 10 accounted for; 10 audit records"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CRM_SIM_URL=http://127.0.0.1:"), "crm-sim was not started: {stderr}");
    assert!(stderr.contains("crm-sim stopped (exit status: 0)"), "crm-sim did not shut down cleanly: {stderr}");
    for expected in [
        "acme-1002   NORMALISED",
        "DLQ INVALID_PHONE",
        "DLQ TENANT_NOT_CONFIGURED",
        "DLQ SCHEMA_INVALID",
        "(region FR)",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}
