//! `coffer verify report` as users run it: real AMD-signed evidence, a policy made from our pins,
//! and the measurement advisor pointing at the likely cause.

use coffer_tests::{build_image, checkout, run};
use coffer_types::Role;

fn testdata(path: &str) -> String {
    checkout()
        .join("attestation/verify/testdata")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn a_genuine_turin_report_is_accepted_for_authenticity() {
    let outcome = run(&[
        "verify",
        "report",
        "--report",
        &testdata("openanolis-trustee/turin-report.bin"),
        "--vcek",
        &testdata("openanolis-trustee/turin-vcek.der"),
        "--at",
        "2026-11-01T00:00:00Z",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.contains("PASS report.signature"),
        "{outcome:?}"
    );
    assert!(outcome.stdout.contains("ACCEPTED"), "{outcome:?}");
}

#[test]
fn a_report_of_another_image_is_rejected_against_our_pins_with_a_likely_cause() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "min_report_version = 2\nallowed_processors = [\"turin\"]\nallowed_vmpl = [0]\nallow_smt = true\n\
         [min_tcb.turin]\nreported = { fmc = 1, bl = 1, tee = 1, snp = 1, ucode = 1 }\n\
         committed = { fmc = 1, bl = 1, tee = 1, snp = 1, ucode = 1 }\n",
    )
    .unwrap();
    let image = dir.path().join("kms");
    build_image(Role::Kms, &image, None);
    let pins = checkout().join("measurements/pins/kms.json");
    let outcome = run(&[
        "verify",
        "report",
        "--report",
        &testdata("openanolis-trustee/turin-report.bin"),
        "--vcek",
        &testdata("openanolis-trustee/turin-vcek.der"),
        "--at",
        "2026-11-01T00:00:00Z",
        "--policy",
        policy.to_str().unwrap(),
        "--pins",
        pins.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(
        outcome.stdout.contains("FAIL policy.measurement"),
        "{outcome:?}"
    );
    assert!(
        outcome
            .stdout
            .contains("likely cause: no launch of this image with 1 to 128 vCPUs"),
        "{outcome:?}"
    );
    // Everything else about the evidence still passes, and is listed.
    assert!(
        outcome.stdout.contains("PASS report.signature"),
        "{outcome:?}"
    );
}

#[test]
fn unusable_input_exits_2_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("report.bin");
    std::fs::write(&garbage, b"not a report").unwrap();
    let outcome = run(&[
        "verify",
        "report",
        "--report",
        garbage.to_str().unwrap(),
        "--vcek",
        &testdata("openanolis-trustee/turin-vcek.der"),
    ]);
    assert_eq!(outcome.code, 2, "{outcome:?}");
    assert!(
        outcome.stderr.contains(garbage.to_str().unwrap()),
        "{outcome:?}"
    );
    assert!(!outcome.stderr.contains("panicked"), "{outcome:?}");
}

/// Real Azure CVM evidence (Trustee az-snp-vtpm, version 2): both halves verify with the
/// quote's own nonce; another nonce is refused by name.
#[test]
fn real_azure_evidence_verifies_and_a_wrong_nonce_is_refused() {
    let evidence = checkout()
        .join("attestation/vtpm/testdata/trustee/az-snp-vtpm_evidence-v2.json")
        .display()
        .to_string();
    let nonce = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";
    let args = |nonce: &str| {
        [
            "verify",
            "azure",
            "--evidence",
            &evidence,
            "--nonce",
            nonce,
            "--at",
            "2026-01-01T00:00:00Z",
        ]
        .map(str::to_owned)
    };
    let ok = run(&args(nonce).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("PASS report.signature"), "{ok:?}");
    assert!(ok.stdout.contains("quote.signature: passed"), "{ok:?}");
    assert!(
        ok.stdout.contains("ACCEPTED: Azure vTPM evidence"),
        "{ok:?}"
    );

    let bad = run(&args("00ff").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout
            .contains("quote.nonce: FAILED (expected 00ff, got 982f5c6e"),
        "{bad:?}"
    );
    assert!(bad.stdout.contains("REJECTED"), "{bad:?}");
}
