//! Our fingerprints against an independent implementation: Python fastavro's Parsing
//! Canonical Form and CRC-64-AVRO for every .avsc in the repo, shipped versions included.

use crm_common::fingerprint::{fingerprint, fingerprint_hex, parsing_canonical_form};
use crm_common::schemas::Registry;
use crm_sync_tests::repo_root;
use std::process::Command;

#[test]
fn fingerprints_match_fastavro_for_every_schema() {
    let root = repo_root();
    let out = Command::new("python3")
        .arg(root.join("scripts/schema_fingerprints.py"))
        .arg(root.join("schemas"))
        .output()
        .expect("python3 (install fastavro: pip install fastavro)");
    assert!(out.status.success(), "fastavro script failed: {}", String::from_utf8_lossy(&out.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs = theirs.as_object().unwrap();
    assert!(theirs.len() >= 10, "expected current and shipped schemas, got {}", theirs.len());
    let registry = Registry::global();
    for (file, fa) in theirs {
        let text = std::fs::read_to_string(root.join("schemas").join(file)).unwrap();
        let ours = parsing_canonical_form(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(ours, fa["canonical"].as_str().unwrap(), "{file}: canonical form");
        let fp = fingerprint(&ours);
        assert_eq!(fingerprint_hex(&fp), fa["fingerprint"].as_str().unwrap(), "{file}: fingerprint");
        assert!(registry.by_fingerprint(&fp).is_some(), "{file}: readers do not accept it");
    }
}
