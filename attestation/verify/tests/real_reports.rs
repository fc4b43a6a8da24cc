//! Every real AMD-signed report in testdata/ verifies, with and without a policy.

// Tests fail by panicking (helpers outside #[test] included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

use coffer_verify::{verify, verify_authenticity_only, CertRole, CheckId, Scope, VekKind};
use common::{policy_for, roots, CASES};

#[test]
fn every_real_report_is_genuine() {
    let roots = roots();
    for case in CASES {
        let start = Instant::now();
        let verdict = verify_authenticity_only(&case.evidence(), &roots, case.at());
        eprintln!("{}: {:?}", case.name, start.elapsed());
        assert!(
            verdict.accepted(),
            "{}: {}",
            case.name,
            coffer_verify::explain::render_text(&verdict, None)
        );
        assert_eq!(verdict.scope(), Scope::AuthenticityOnly);
        assert_eq!(verdict.generation(), Some(case.generation), "{}", case.name);
        assert_eq!(verdict.signer(), Some(case.kind), "{}", case.name);
        // A VCEK's chip ID is checked; a VLEK has none.
        assert_eq!(
            verdict.check(CheckId::VekChipId).is_some(),
            case.kind == VekKind::Vcek,
            "{}",
            case.name
        );
        assert!(verdict.check(CheckId::ReportSignature).unwrap().passed);
        assert!(verdict.check(CheckId::VekReportedTcb).unwrap().passed);
        assert!(
            verdict
                .check(CheckId::ChainValidity(case.kind.role()))
                .unwrap()
                .passed
        );
    }
}

#[test]
fn every_real_report_passes_a_policy_made_for_it() {
    let roots = roots();
    for case in CASES {
        let policy = policy_for(&case);
        let verdict = verify(&case.evidence(), &roots, &policy, case.at());
        assert!(
            verdict.accepted(),
            "{}: {}",
            case.name,
            coffer_verify::explain::render_text(&verdict, None)
        );
        assert_eq!(verdict.scope(), Scope::Policy);
        for id in [
            CheckId::PolicyMeasurement,
            CheckId::PolicyDebug,
            CheckId::PolicyHostData,
            CheckId::PolicyReportData,
            CheckId::PolicyIdKeyDigest,
            CheckId::PolicyVmpl,
        ] {
            assert!(
                verdict.check(id).is_some(),
                "{}: {id} did not run",
                case.name
            );
        }
    }
}

#[test]
fn a_given_ask_and_ark_are_used_when_they_chain_to_the_builtin_ark() {
    let case = common::Case::by_name("virtee milan v2");
    let bundle = common::load("virtee-sev/cert_chain_milan");
    let certs = coffer_verify::Certificate::from_pem_bundle(&bundle).unwrap();
    let [ask, ark] = [certs[0].clone(), certs[1].clone()];
    let mut evidence = case.evidence();
    evidence.ask = Some(ask);
    evidence.ark = Some(ark);
    let verdict = verify_authenticity_only(&evidence, &roots(), case.at());
    assert!(
        verdict.accepted(),
        "{}",
        coffer_verify::explain::render_text(&verdict, None)
    );
    assert!(verdict
        .check(CheckId::ChainArkPinned)
        .unwrap()
        .got
        .starts_with("given ARK-Milan"));
    assert!(
        verdict
            .check(CheckId::ChainSignature(CertRole::Ask))
            .unwrap()
            .passed
    );
}

#[test]
fn the_human_and_json_renderings_name_every_check() {
    let case = common::Case::by_name("turin v5");
    let verdict = verify(&case.evidence(), &roots(), &policy_for(&case), case.at());
    let text = coffer_verify::explain::render_text(&verdict, None);
    for check in verdict.checks() {
        assert!(
            text.contains(&format!("PASS {}: expected ", check.id)),
            "{text}"
        );
    }
    assert!(text.ends_with("checks passed\n"), "{text}");
    assert!(
        text.contains("PASS policy.reported_tcb.fmc: expected >= 1; got 1"),
        "{text}"
    );

    let json = serde_json::to_value(&verdict).unwrap();
    assert_eq!(json["accepted"], true);
    assert_eq!(json["generation"], "turin");
    assert_eq!(json["signer"], "Vcek");
    assert_eq!(
        json["checks"].as_array().unwrap().len(),
        verdict.checks().len()
    );
    assert_eq!(json["checks"][0]["name"], "chain.vek_issuer");

    let report = coffer_verify::Report::parse(&case.report_bytes()).unwrap();
    let summary = coffer_verify::explain::ReportSummary::new(&report, verdict.generation());
    let fields = coffer_verify::explain::render_report(&summary);
    assert!(
        fields.contains("reported_tcb: 0103020500000061 (fmc=1 bl=3 tee=2 snp=5 ucode=97)"),
        "{fields}"
    );
    assert!(
        fields.contains("cpuid: family 0x1a model 0x02 stepping 1"),
        "{fields}"
    );
    assert!(fields.contains("launch_mit_vector: 0x3f"), "{fields}");
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["reported_tcb"]["decoded"]["fmc"], 1);
}
