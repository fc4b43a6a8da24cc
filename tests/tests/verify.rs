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

/// Some tools write reports as hex text; the CLI reads those too.
#[test]
fn a_report_given_as_hex_text_is_decoded_and_verified() {
    let outcome = run(&[
        "verify",
        "report",
        "--report",
        &testdata("virtee-sev/report_milan.hex"),
        "--vcek",
        &testdata("virtee-sev/vcek_milan.der"),
        "--at",
        "2025-01-01T00:00:00Z",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.contains("PASS report.signature"),
        "{outcome:?}"
    );
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

    let owned = args(nonce);
    let mut json_args: Vec<&str> = owned.iter().map(String::as_str).collect();
    json_args.push("--json");
    let json = run(&json_args);
    assert_eq!(json.code, 0, "{json:?}");
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["accepted"], true);
    assert!(value["vtpm"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "quote.nonce" && c["passed"] == true));

    let bad = run(&args("00ff").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout
            .contains("quote.nonce: FAILED (expected 00ff, got 982f5c6e"),
        "{bad:?}"
    );
    assert!(bad.stdout.contains("REJECTED"), "{bad:?}");
}

/// On Azure the launch measurement is Microsoft's firmware: the policy pins its ID key instead,
/// and the image is pinned by PCRs.
#[test]
fn azure_policy_pins_the_id_key_and_the_pcrs() {
    let dir = tempfile::tempdir().unwrap();
    let evidence_path =
        checkout().join("attestation/vtpm/testdata/trustee/az-snp-vtpm_evidence-v2.json");
    let evidence: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&evidence_path).unwrap()).unwrap();
    let pcr11 = evidence["tpm_quote"]["pcrs"][11]
        .as_str()
        .unwrap()
        .to_owned();
    let report = std::fs::read(testdata("trustee/derived/az-v2-milan_snp-report.bin")).unwrap();
    let id_key: String = report[0xE0..0x110]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let write_policy = |id_key: &str| {
        let path = dir.path().join(format!("policy-{}.toml", &id_key[..4]));
        std::fs::write(
            &path,
            format!(
                "min_report_version = 2\nallowed_processors = [\"milan\"]\nallowed_vmpl = [0]\nallow_smt = true\n\
                 any_measurement_with_pinned_id_key = true\nallowed_id_key_digests = [\"{id_key}\"]\n\
                 [min_tcb.milan]\nreported = {{ bl = 3, tee = 0, snp = 20, ucode = 200 }}\n\
                 committed = {{ bl = 3, tee = 0, snp = 20, ucode = 200 }}\n"
            ),
        )
        .unwrap();
        path
    };
    let write_pins = |value: &str| {
        let path = dir.path().join(format!("pcrs-{}.toml", &value[..4]));
        std::fs::write(&path, format!("\"11\" = [\"{value}\"]\n")).unwrap();
        path
    };
    let verify = |policy: &std::path::Path, pins: &std::path::Path| {
        run(&[
            "verify",
            "azure",
            "--evidence",
            evidence_path.to_str().unwrap(),
            "--nonce",
            "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef",
            "--at",
            "2026-01-01T00:00:00Z",
            "--policy",
            policy.to_str().unwrap(),
            "--pcr-pins",
            pins.to_str().unwrap(),
        ])
    };
    let ok = verify(&write_policy(&id_key), &write_pins(&pcr11));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("PASS policy.id_key_digest"), "{ok:?}");
    assert!(ok.stdout.contains("pcr.11: passed"), "{ok:?}");
    assert!(
        ok.stdout.contains("(policy and PCR pins applied)"),
        "{ok:?}"
    );

    let other_key = verify(&write_policy(&"ab".repeat(48)), &write_pins(&pcr11));
    assert_eq!(other_key.code, 1, "{other_key:?}");
    assert!(
        other_key.stdout.contains("FAIL policy.id_key_digest"),
        "{other_key:?}"
    );

    let other_pcr = verify(&write_policy(&id_key), &write_pins(&"ee".repeat(32)));
    assert_eq!(other_pcr.code, 1, "{other_pcr:?}");
    assert!(other_pcr.stdout.contains("pcr.11: FAILED"), "{other_pcr:?}");
}

/// The whole offline trust chain on the simulated platform: our kms image, its committed pins, a
/// report from the simulated secure processor with the image's recomputed measurement. Accepted
/// only when the verifier is told twice to trust the simulation; refused by name otherwise.
#[test]
fn a_simulated_report_of_our_image_passes_only_when_simulation_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("kms");
    build_image(Role::Kms, &image, None);
    let (keys, evidence) = (dir.path().join("keys"), dir.path().join("evidence"));
    let made = run(&[
        "sim",
        "report",
        "--image",
        image.to_str().unwrap(),
        "--out",
        evidence.to_str().unwrap(),
        "--sim-dir",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(made.code, 0, "{made:?}");
    assert!(made.stdout.contains("NOT AMD hardware"), "{made:?}");

    let policy = |trust_root: &str| {
        let path = dir.path().join(format!("{trust_root}.toml"));
        std::fs::write(
            &path,
            format!(
                "trust_root = \"{trust_root}\"\nmin_report_version = 3\nallowed_processors = [\"genoa\"]\n\
                 allowed_vmpl = [0]\nallow_smt = true\n[min_tcb.genoa]\n\
                 reported = {{ bl = 9, tee = 0, snp = 23, ucode = 84 }}\n\
                 committed = {{ bl = 9, tee = 0, snp = 23, ucode = 84 }}\n"
            ),
        )
        .unwrap();
        path
    };
    let pins = checkout().join("measurements/pins/kms.json");
    let verify = |policy: &std::path::Path, trust: bool| {
        let mut args = vec![
            "verify".to_owned(),
            "report".into(),
            "--report".into(),
            evidence.join("report.bin").display().to_string(),
            "--vcek".into(),
            evidence.join("vcek.der").display().to_string(),
            "--policy".into(),
            policy.display().to_string(),
            "--pins".into(),
            pins.display().to_string(),
        ];
        if trust {
            args.extend(["--trust-simulation".into(), keys.display().to_string()]);
        }
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let accepted = verify(&policy("simulation"), true);
    assert_eq!(accepted.code, 0, "{accepted:?}");
    assert!(
        accepted.stdout.contains("PASS policy.measurement"),
        "{accepted:?}"
    );
    assert!(
        accepted.stdout.contains("PASS chain.trust_root"),
        "{accepted:?}"
    );

    for (policy, trust) in [(policy("simulation"), false), (policy("amd"), true)] {
        let refused = verify(&policy, trust);
        assert_eq!(refused.code, 1, "{refused:?}");
        assert!(
            refused.stdout.contains("FAIL chain.trust_root"),
            "{refused:?}"
        );
    }
}
