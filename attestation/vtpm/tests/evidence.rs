//! Whole Azure evidence documents (Trustee `az-snp-vtpm`, versions 1 and 2) from real CVMs.

#![allow(clippy::panic)]

use coffer_vtpm::evidence::parse_trustee_json;
use coffer_vtpm::{verify_azure_vtpm_authenticity, CheckId, HclReport};

fn document(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/trustee/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn real_evidence_of_both_versions_verifies_with_its_nonce_and_not_with_another() {
    for name in [
        "az-snp-vtpm_evidence-genoa.json",
        "az-snp-vtpm_evidence-v2.json",
    ] {
        let evidence = parse_trustee_json(&document(name)).unwrap();
        let hcl = HclReport::parse(&evidence.hcl_report).unwrap();
        assert!(hcl.snp_report().is_some(), "{name}");
        let nonce = evidence.quote.attest().unwrap().extra_data;
        let verdict = verify_azure_vtpm_authenticity(&hcl, &evidence.quote, &nonce);
        assert!(verdict.passed(), "{name}: {verdict}");

        let verdict = verify_azure_vtpm_authenticity(&hcl, &evidence.quote, b"another nonce");
        assert_eq!(
            verdict.failed_ids(),
            vec![CheckId::QuoteNonce],
            "{name}: {verdict}"
        );
    }
}

#[test]
fn malformed_documents_are_refused_by_name() {
    assert!(parse_trustee_json(b"{}").is_err());
    let mut v2: serde_json::Value =
        serde_json::from_slice(&document("az-snp-vtpm_evidence-v2.json")).unwrap();
    v2["tpm_quote"]["pcrs"][0] = serde_json::Value::String("abcd".into());
    let err = parse_trustee_json(v2.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "evidence field pcrs: a sha256 PCR value has 2 bytes, not 32"
    );
}
