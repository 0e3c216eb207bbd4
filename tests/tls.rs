//! TLS to PostgreSQL, as libpq does it, against the machine's server (Debian's runs with
//! ssl = on and its self-signed "snakeoil" certificate). One test: PGSSLROOTCERT is
//! process-wide, so the cases run in order.

use crm_common::audit_store::AuditStore;

const BASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn encrypted(url: &str) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = AuditStore::connect(url).await?;
        let row =
            store.client().query_one("SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)", &[]).await?;
        Ok(row.get::<_, bool>(0))
    })
}

#[test]
fn sslmode_require_encrypts_and_a_root_certificate_is_checked() {
    std::env::remove_var("PGSSLROOTCERT");
    assert!(!encrypted(BASE).unwrap(), "no sslmode: plain, as local servers expect");
    assert!(encrypted(&format!("{BASE}?sslmode=require")).unwrap(), "sslmode=require: encrypted");

    // The server's own certificate as the CA: verified (libpq's verify-ca).
    std::env::set_var("PGSSLROOTCERT", "/etc/ssl/certs/ssl-cert-snakeoil.pem");
    assert!(encrypted(&format!("{BASE}?sslmode=require")).unwrap(), "verified against its CA");
    // Any other CA: refused.
    let other = crm_sync_tests::TempFile::new(
        "other-ca.pem",
        &std::fs::read_to_string("/etc/ssl/certs/ISRG_Root_X1.pem").expect("a public CA on the machine"),
    );
    std::env::set_var("PGSSLROOTCERT", other.path());
    let err = encrypted(&format!("{BASE}?sslmode=require")).unwrap_err();
    assert!(err.to_string().contains("PostgreSQL at"), "{err}");
    std::env::remove_var("PGSSLROOTCERT");
}
